"""The item encoder's attention: torch's SDPA, with half-precision attention on CPU run in fp32.

Under bf16 autocast on CPU the encoder's matmuls run in bf16, which CPUs with AMX (Intel Sapphire
Rapids and later) multiply about four times as fast as fp32. Attention is the exception: torch's
CPU flash-attention kernel is far slower in bf16 than in fp32, backward pass above all. One
forward and backward pass at 130 items x 4 heads x 32 tokens x 64 took 42-45 ms in bf16 and
10-13 ms in fp32 (torch 2.13, 2 cores), and in a bf16 training step of mlrec's benchmark model
attention's backward took over a third of the step. So on CPU, half-precision queries, keys and
values are cast to fp32 (three small copies), attention runs there, and its output is cast back.
On GPUs, and in fp32, the inputs pass through to Hugging Face's own SDPA attention unchanged.

The function is registered with Hugging Face's `AttentionInterface`, and SDPA's mask builder under
the same name with `AttentionMaskInterface` (for a name without one, transformers builds no
attention mask at all, and padding would be attended to). It is set on backbones that use
`sdpa`. The choice lives in the in-memory config only: `save_pretrained` does not write it, so
exported models load anywhere without mlrec.
"""

from __future__ import annotations

import logging

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "mlrec_sdpa"
_HALF = (torch.bfloat16, torch.float16)
log = logging.getLogger(__name__)


def sdpa_fp32_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """Hugging Face's SDPA attention; on CPU, bf16/fp16 inputs are computed in fp32."""
    if query.device.type != "cpu" or query.dtype not in _HALF:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()  # SDPA wants a float mask in the query's dtype
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(query.dtype), weights


AttentionInterface.register(NAME, sdpa_fp32_on_cpu)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_mlrec_attention(backbone: PreTrainedModel) -> PreTrainedModel:
    """Switch a backbone on `sdpa` attention to `sdpa_fp32_on_cpu`; others are left as they are
    (eager attention, flash-attention kernels, architectures with their own attention code)."""
    if getattr(backbone.config, "_attn_implementation", None) != "sdpa":
        return backbone
    try:
        backbone.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError, AttributeError) as err:  # remote code, old models
        log.info("keeping sdpa attention for %s: %s", type(backbone).__name__, err)
    return backbone
