"""Decoder-only language models (Qwen2/3, Llama, Gemma 2/3, Mistral, Phi-3) as item encoders.

What a decoder needs that a BERT-family encoder does not:
- Causal attention: token t sees tokens 0..t only, so the first token knows nothing of the text
  (cls pooling is refused) and the last real token is the one that has read all of it. Last-token
  pooling (`last`) is what E5-Mistral, gte-Qwen2 and Qwen3-Embedding use; mean pooling works too.
- Padding side: tokenizers of these families often pad on the left. Rows are moved to the right
  (real tokens first) before the model sees them, so positions count from 0 for every row and
  the last real token sits at length - 1 whichever side the input was padded on.
- EOS: the embedding models of some families append the EOS token and pool on it
  (`append_eos: auto` follows `DECODERS`); a row that already ends in EOS gets no second one.

The encoder type comes from the model's config (`model_type` in `DECODERS`); `model.encoder_type`
overrides it for an architecture mlrec does not list. Attention runs through SDPA
(`attn_implementation="sdpa"`, then mlrec's SDPA function: mlrec.models.attention), except for
Gemma 2 with attention-logit soft-capping, which SDPA does not apply: it keeps eager attention so
the model computes what it was trained to compute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from mlrec.config import DECODER_CLS, ConfigError, ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    config_class: str  # transformers' config class, for random backbones built from sizes
    append_eos: bool  # what `append_eos: auto` does: the family's embedding models append it
    target_modules: tuple[str, ...]  # LoRA/AdaLoRA defaults: attention and MLP projections


_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# model_type -> family. EOS: gte-Qwen2 and Qwen3-Embedding (qwen2, qwen3), E5-Mistral (mistral)
# and NV-Embed / E5-style Llama fine-tunes append it; EmbeddingGemma mean-pools and no common
# Phi-3 embedding model exists, so those two do not. Phi-3 fuses q/k/v and gate/up into one
# Linear each.
DECODERS: dict[str, Family] = {
    "qwen2": Family("Qwen2Config", True, _PROJECTIONS),
    "qwen3": Family("Qwen3Config", True, _PROJECTIONS),
    "llama": Family("LlamaConfig", True, _PROJECTIONS),
    "mistral": Family("MistralConfig", True, _PROJECTIONS),
    "gemma": Family("GemmaConfig", False, _PROJECTIONS),
    "gemma2": Family("Gemma2Config", False, _PROJECTIONS),
    "gemma3_text": Family("Gemma3TextConfig", False, _PROJECTIONS),
    "phi3": Family("Phi3Config", False, ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
}

# the default adapter.modules_to_save names BERT's embeddings; their decoder counterparts
# (None: decoders have no such module, rotary positions and no embedding layer norm)
_EMBEDDING_NAMES = {
    "word_embeddings": "embed_tokens",
    "position_embeddings": None,
    "embeddings.LayerNorm": None,
}


def is_decoder(config: PretrainedConfig, encoder_type: str = "auto") -> bool:
    """Whether a backbone with this config is decoder-only (`model.encoder_type` overrides)."""
    if encoder_type != "auto":
        return encoder_type == "decoder"
    return config.model_type in DECODERS


def check_pooling(pooling: str, decoder: bool) -> None:
    if decoder and pooling == "cls":
        raise ConfigError(f"model.pooling {DECODER_CLS}")


def weights_dtype(cfg: ModelConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.weights_dtype == "bfloat16" else torch.float32


def attention_implementation(config: PretrainedConfig) -> str:
    """sdpa, unless the model soft-caps its attention logits (Gemma 2), which SDPA ignores."""
    if getattr(config, "attn_logit_softcapping", None):
        return "eager"
    return "sdpa"


def random_decoder(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> PreTrainedModel:
    """A randomly initialised decoder of `cfg.architecture` with the configured sizes, on the
    special ids of mlrec's locally trained tokenizer (bos 0, pad 1, eos 2, as XLM-R's)."""
    config_class = getattr(transformers, DECODERS[cfg.architecture].config_class)
    head_dim = cfg.hidden_size // cfg.num_heads
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        tie_word_embeddings=False,
        attention_dropout=cfg.dropout,
    )
    # families with their own head width or attention scale default to their large models'
    for key, value in (("head_dim", head_dim), ("query_pre_attn_scalar", head_dim)):
        if hasattr(config, key):
            setattr(config, key, value)
    config._attn_implementation = attention_implementation(config)
    model = transformers.AutoModel.from_config(config)
    return model.to(weights_dtype(cfg))


def eos_token_id(config: PretrainedConfig) -> int | None:
    eos = config.eos_token_id
    if isinstance(eos, list):  # Llama 3 lists several; the first is the end of text
        eos = eos[0] if eos else None
    return eos


@dataclass
class DecoderInputs:
    """Token rows as a decoder item encoder wants them: real tokens first, then EOS if asked."""

    eos_id: int | None  # None: nothing appended

    def prepare(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask != 0
        input_ids, mask = right_aligned(input_ids, mask)
        if self.eos_id is not None:
            input_ids, mask = with_eos(input_ids, mask, self.eos_id)
        return input_ids, mask.to(attention_mask.dtype)


def right_aligned(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the left (or both sides) moved so that their tokens start at column 0."""
    first = mask.int().argmax(dim=1)  # the first real token (0 for right-padded rows)
    if not bool(first.any()):
        return input_ids, mask
    width = input_ids.shape[1]
    columns = torch.arange(width, device=input_ids.device)
    source = (columns[None, :] + first[:, None]) % width
    lengths = mask.sum(dim=1)
    return input_ids.gather(1, source), columns[None, :] < lengths[:, None]


def with_eos(
    input_ids: torch.Tensor, mask: torch.Tensor, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned rows with `eos_id` after their last token, unless it is already there; the
    block is one column wider only if some row needs it."""
    lengths = mask.sum(dim=1)
    last = input_ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
    needs = (last != eos_id) & (lengths > 0)
    rows = len(input_ids)
    input_ids = torch.cat([input_ids, input_ids.new_full((rows, 1), eos_id)], dim=1)
    mask = torch.cat([mask, mask.new_zeros((rows, 1))], dim=1)
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    place = (columns[None, :] == lengths[:, None]) & needs[:, None]
    input_ids = torch.where(place, eos_id, input_ids)
    mask = mask | place
    width = max(int(mask.sum(dim=1).max()), 1)
    return input_ids[:, :width], mask[:, :width]


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last real token, padded on either side."""
    mask = attention_mask != 0
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


def decoder_inputs(backbone: PreTrainedModel, cfg: ModelConfig) -> DecoderInputs | None:
    """How `backbone`'s items are prepared; None for an encoder (BERT family)."""
    config = backbone.config
    decoder = is_decoder(config, cfg.encoder_type)
    check_pooling(cfg.pooling, decoder)
    if not decoder:
        return None
    family = DECODERS.get(config.model_type)
    append = cfg.append_eos == "always" or (
        cfg.append_eos == "auto" and family is not None and family.append_eos
    )
    eos = eos_token_id(config) if append else None
    if append and eos is None:
        raise ConfigError(
            f"model.append_eos: {config.model_type}'s config has no eos_token_id; set "
            "model.append_eos=never or give the model one"
        )
    return DecoderInputs(eos)


def modules_to_save(backbone: PreTrainedModel, names: list[str]) -> list[str]:
    """`adapter.modules_to_save` for a decoder: BERT's embedding names become their decoder
    counterparts (or are left out, logged), and every name must match a module."""
    out: list[str] = []
    for name in names:
        if name in _EMBEDDING_NAMES:
            counterpart = _EMBEDDING_NAMES[name]
            if counterpart is None:
                log.info("adapter.modules_to_save: %s has no counterpart in a decoder", name)
                continue
            name = counterpart
        if not any(m == name or m.endswith("." + name) for m, _ in backbone.named_modules()):
            raise ConfigError(
                f"adapter.modules_to_save: no module named {name!r} in this "
                f"{backbone.config.model_type} model"
            )
        if name not in out:
            out.append(name)
    return out
