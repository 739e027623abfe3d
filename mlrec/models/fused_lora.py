"""LoRA layers computed through their merged weight: one matmul instead of three plus two passes.

peft computes a LoRA Linear as `base(x) + lora_B(lora_A(x)) * scaling`: besides the base matmul
that is two rank-r matmuls over the activations, a multiply and an add, each a full pass over a
[tokens, width] tensor, and the same again in the backward pass plus the sum of the two input
gradients. Those passes are bound by memory bandwidth, not arithmetic: in mlrec's training
benchmark (256-wide encoder, r=8, about 5,500 tokens a step, 2 CPU cores) they took about a
sixth of every step.

Here the layer is computed from W' = W + scaling * B @ A (a rank-r update of a small matrix):

    forward:  y = x @ W'^T + b,            xa = x @ A^T (kept for B's gradient)
    backward: dx = dy @ W'
              dA = scaling * (dy @ B)^T @ x
              dB = scaling * dy^T @ xa

which is the same function and the same gradients as peft's forward (up to float rounding), with
no elementwise passes over the activations left. W' is rebuilt in the backward pass rather than
stored, so the activation memory is peft's. Under autocast the matmuls run in the autocast dtype,
as peft's would.

Only plain LoRA on nn.Linear is fused; everything else (dropout on the LoRA input, DoRA and other
variants, several active adapters, merged or disabled adapters, LoRA bias, quantised base layers,
weights partitioned by DeepSpeed ZeRO-3) goes through peft's own forward, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class _MergedLoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dtype: torch.dtype):
        merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling).to(dtype)
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        out = flat @ merged.t() if bias is None else torch.addmm(bias.to(dtype), flat, merged.t())
        xa = flat @ lora_a.to(dtype).t()
        ctx.save_for_backward(flat, weight, bias, lora_a, lora_b, xa)
        ctx.scaling, ctx.dtype, ctx.x_shape, ctx.x_dtype = scaling, dtype, x.shape, x.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, weight, bias, lora_a, lora_b, xa = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)
        need_x, need_w, need_b, need_a, need_lb = ctx.needs_input_grad[:5]
        grad_x = grad_w = grad_bias = grad_a = grad_lb = None
        if need_x:
            merged = torch.addmm(weight, lora_b, lora_a, alpha=s).to(dtype)
            grad_x = (grad @ merged).view(ctx.x_shape).to(ctx.x_dtype)
        if need_a:
            grad_a = ((grad @ lora_b.to(dtype)).t() @ flat).to(lora_a.dtype).mul_(s)
        if need_lb:
            grad_lb = (grad.t() @ xa).to(lora_b.dtype).mul_(s)
        # the base weight and bias are frozen under LoRA; they get gradients only if unfrozen
        if need_w:
            grad_w = (grad.t() @ flat).to(weight.dtype)
        if need_b:
            grad_bias = grad.sum(0).to(bias.dtype)
        return grad_x, grad_w, grad_bias, grad_a, grad_lb, None, None


class FusedLoraLinear(LoraLinear):
    """peft's LoRA Linear with a merged-weight forward where that is the same function.

    Same parameters, state dict, merge/unmerge and adapter files as peft's class; only `forward`
    differs, and it falls back to peft's whenever the layer is not plain, active, single LoRA.
    """

    def _fusable_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        dropout = self.lora_dropout[name]
        base = self.base_layer
        if (
            name in self.lora_variant
            or self.lora_B[name].bias is not None
            or type(base) is not nn.Linear
            or self.fan_in_fan_out
            or (self.training and isinstance(dropout, nn.Dropout) and dropout.p > 0)
            # ZeRO-3 gathers a module's weights in its own forward hook, which this path skips
            or hasattr(base.weight, "ds_id")
            or hasattr(self.lora_A[name].weight, "ds_id")
        ):
            return None
        return name

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._fusable_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        weight = self.base_layer.weight
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        elif x.dtype == weight.dtype:
            dtype = weight.dtype
        else:  # mixed dtypes without autocast: peft's casting rules apply
            return super().forward(x, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return _MergedLoraLinear.apply(
                x,
                weight,
                self.base_layer.bias,
                self.lora_A[name].weight,
                self.lora_B[name].weight,
                self.scaling[name],
                dtype,
            )


def fuse_lora(model: nn.Module) -> int:
    """Give every plain peft LoRA Linear in `model` the merged-weight forward; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count


def unfuse_lora(model: nn.Module) -> int:
    """Back to peft's own forward (benchmarks compare the two on one set of weights)."""
    count = 0
    for module in model.modules():
        if type(module) is FusedLoraLinear:
            module.__class__ = LoraLinear
            count += 1
    return count
