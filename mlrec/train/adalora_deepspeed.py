"""AdaLoRA's rank allocation under DeepSpeed ZeRO.

peft prunes AdaLoRA ranks from |weight * gradient| sensitivities by editing `lora_E` in place
after the optimizer step. Under DeepSpeed that fails three ways: the step runs inside accelerate's
`backward` and clears the gradients first; the optimizer keeps its own fp32 copy of the weights,
which overwrites in-place edits at the next step; and under ZeRO-3 a process holds only a slice
of each weight. So here the engine steps explicitly, peft's allocator is handed full copies of
the LoRA weights (with their full gradients), and the pruned values are written back into both
DeepSpeed's fp32 copy and the model's own weights. Every process computes the same allocation
(gradients are already reduced), as the collective gathers require.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _FullWeights:
    """Stands in for the model where peft's RankAllocator reads `named_parameters()`."""

    def __init__(self, named: list[tuple[str, torch.Tensor]]) -> None:
        self._named = named

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self._named)


def _allocate(tuner: nn.Module, weights: _FullWeights, step: int) -> None:
    """peft's AdaLoraModel.update_and_allocate schedule, applied to `weights`."""
    config = tuner.peft_config[tuner.trainable_adapter_name]
    allocator = tuner.rankallocator
    final = config.total_step - config.tfinal
    if step < final:
        _, pattern = allocator.update_and_allocate(weights, step)
        if pattern:
            config.rank_pattern = pattern
    elif step == final:
        _, config.rank_pattern = allocator.update_and_allocate(weights, step, force_mask=True)
        allocator.reset_ipt()
    else:
        allocator.mask_using_rank_pattern(weights, config.rank_pattern)


def _writable(param: nn.Parameter):
    if not hasattr(param, "ds_id"):  # ZeRO-1/2: every process holds the whole weight
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param], modifier_rank=0)


def backward_and_step(
    engine, adalora: nn.Module, loss: torch.Tensor, sync: bool, step: int
) -> None:
    """Backward through the DeepSpeed `engine`; at an accumulation boundary step it and
    reallocate AdaLoRA's ranks (peft's order: step, allocate, then the gradients are gone)."""
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_full_grad,
        safe_set_full_fp32_param,
    )

    engine.set_gradient_accumulation_boundary(is_boundary=sync)
    engine.backward(loss)
    if not sync:
        return
    lora = [(n, p) for n, p in adalora.base_model.model.named_parameters() if "lora_" in n]
    grads = {n: safe_get_full_grad(p).detach().clone() for n, p in lora}
    engine.step()
    full = []
    for name, param in lora:
        weight = safe_get_full_fp32_param(param).detach().clone()
        weight.grad = grads[name]
        full.append((name, weight))
    _allocate(adalora.base_model, _FullWeights(full), step)
    for (name, param), (_, weight) in zip(lora, full, strict=True):
        if "lora_E" not in name:
            continue  # only the singular values are pruned
        safe_set_full_fp32_param(param, weight)
        with _writable(param), torch.no_grad():
            param.data.copy_(weight.to(param.dtype).view_as(param.data))


def kept_rank(adalora: nn.Module) -> int:
    """AdaLoRA's current total rank read from DeepSpeed's full weights (the live ones may be
    slices); a collective call under ZeRO-3."""
    from deepspeed.utils import safe_get_full_fp32_param

    return sum(
        int((safe_get_full_fp32_param(p) != 0).sum())
        for n, p in adalora.base_model.model.named_parameters()
        if "lora_E" in n
    )
