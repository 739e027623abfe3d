"""LoRA layers without their elementwise passes: the update folded into the base matmul.

peft computes a LoRA Linear as `base(x) + lora_B(lora_A(x)) * scaling`: besides the base matmul
that is two rank-r matmuls over the activations, a multiply and an add, each a full pass over a
[tokens, width] tensor, and the same again in the backward pass plus the sum of the two input
gradients. Those passes are bound by memory bandwidth, not arithmetic: in mlrec's training
benchmark (256-wide encoder, r=8, about 5,500 tokens a step, 2 CPU cores) they took about a
sixth of every step.

In fp32 the layer is computed from W' = W + scaling * B @ A (a rank-r update of a small matrix):

    forward:  y = x @ W'^T + b,            xa = x @ A^T (kept for B's gradient)
    backward: dx = dy @ W'
              dA = scaling * (dy @ B)^T @ x
              dB = scaling * dy^T @ xa

the same function and gradients as peft's (up to float rounding), with no elementwise pass over
the activations left. The skinny products x @ A^T and dy @ B are computed by the big matmuls
themselves, from [W'; A] and [W' | B] (see `_merged_stack`). W' is rebuilt in the backward
pass rather than stored, so the activation memory is peft's. In bf16/fp16 (autocast, or
half-precision weights) the update is not folded into W', where rounding would swallow an
update smaller than W's rounding step; it is added to the base product by the same matmul call
(addmm into the output), which rounds once. On CPU the half-precision matmuls get their rows
padded to one of a few sizes (`padded_rows`), so that oneDNN can reuse its compiled kernels.

Plain LoRA and AdaLoRA on nn.Linear are fused; everything else (dropout on the LoRA input, DoRA
and other variants, several active adapters, merged or disabled adapters, LoRA bias, quantised
base layers, weights partitioned by DeepSpeed ZeRO-3) goes through peft's own forward, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.adalora.layer import SVDLinear
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

# Rows of a stacked weight are padded to a multiple of this: MKL's fp32 matmul measured 15-20%
# slower at 256+8 output columns than at 256+16 (2,784 x 256 inputs, 2 cores).
ALIGN = 16


def padded_rows(rows: int) -> int:
    """`rows` rounded up to a multiple of 64, and from 512 rows on to one of 8 sizes per power of
    two (at most 12.5% more).

    CPU matmuls in bf16/fp16 run through oneDNN, which compiles a kernel for every new shape. A
    batch's item groups give new row counts every step, and with fresh shapes a bf16 matmul of
    [~3,000 x 256] by [256 x 1,024] ran at 190-290 GFLOP/s against 1,150+ with a repeated shape
    (2 cores with AMX): compiling cost more than multiplying. Zero rows are cheaper.
    """
    step = 1 << max(rows.bit_length() - 4, 6)  # an eighth of the power of two at or below
    return -(-rows // step) * step


def _half_rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[rows, n] `t` cast to `dtype`; on CPU written into zero-padded `padded_rows(rows)` rows
    (the cast copies anyway, so the padding costs no extra pass over `t`)."""
    if t.device.type != "cpu":
        return t.to(dtype)
    out = t.new_empty(padded_rows(len(t)), t.shape[1], dtype=dtype)
    out[: len(t)].copy_(t)
    out[len(t) :].zero_()
    return out


def _merged_stack(weight, lora_a, lora_b, scaling: float, dim: int):
    """W' = W + scaling * B @ A with A below it (dim 0: [W'; A]) or B beside it (dim 1: [W' | B]),
    zero-padded along `dim` to a multiple of ALIGN.

    One matmul with the stack reads the activations once for both products; with two matmuls
    the second, skinny one (r columns) reads them again from memory, which took about a tenth of
    a training step in mlrec's CPU benchmark.
    """
    extra = lora_a if dim == 0 else lora_b
    n, r = weight.shape[dim], extra.shape[dim]
    size = list(weight.shape)
    size[dim] = n + r + (-(n + r)) % ALIGN
    stack = weight.new_empty(size)
    stack.narrow(dim, n, r).copy_(extra)
    stack.narrow(dim, n + r, size[dim] - n - r).zero_()
    # for dim 1 the W' block is strided; BLAS writes it in place through its row stride
    stack.narrow(dim, 0, n).copy_(weight).addmm_(lora_b, lora_a, alpha=scaling)
    return stack


class _FusedLoraLinear(torch.autograd.Function):
    """y = x @ W^T + b + scaling * (x @ A^T) @ B^T with its gradients, in `dtype`.

    In fp32 the LoRA update is folded into the weight (W' = W + scaling * B @ A), and the skinny
    products ride along in the big matmuls: x @ [W'; A]^T gives y and x @ A^T, and dy @ [W' | B]
    gives dx and dy @ B, so each of x and dy is read once there instead of twice (y and dx are
    returned as views with the stacked row stride). In bf16/fp16 the update is not folded in: a
    LoRA update far smaller than W's own rounding step would be lost in W', so there it is
    accumulated into the base product instead (addmm with beta=1, still no separate elementwise
    pass), which rounds once, as peft's sum does.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dtype, track: bool):
        # track: autograd records this call (grad mode was on), so the backward will need x @ A^T
        merge = dtype in (torch.float32, torch.float64)
        flat = x.reshape(-1, x.shape[-1])
        rows = len(flat)
        flat = flat.to(dtype) if merge else _half_rows(flat, dtype)
        n_out, rank = weight.shape[0], lora_a.shape[0]
        xa = None
        if merge:
            # y comes back as a strided view of the stacked product, and elementwise ops read
            # those more slowly (GELU measured 30% slower), so stack only where the read it
            # saves, x, is at least as wide as y; the backward pass applies the mirror rule
            stack = track and n_out <= flat.shape[1]
            if stack:
                stacked = _merged_stack(weight, lora_a, lora_b, scaling, dim=0)
                if bias is not None:
                    bias = torch.cat([bias, bias.new_zeros(len(stacked) - n_out)])
            else:
                stacked = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
                xa = flat @ lora_a.t() if track else None
            out = flat @ stacked.t() if bias is None else torch.addmm(bias, flat, stacked.t())
            if stack:
                xa = out[:, n_out : n_out + rank].contiguous()
                out = out[:, :n_out]
        else:
            xa = flat @ lora_a.to(dtype).t()
            base = weight.to(dtype)
            out = flat @ base.t() if bias is None else torch.addmm(bias.to(dtype), flat, base.t())
            out = out.addmm_(xa, lora_b.to(dtype).t(), alpha=scaling)[:rows]
        ctx.save_for_backward(flat, weight, lora_a, lora_b, xa)
        ctx.scaling, ctx.dtype, ctx.merge = scaling, dtype, merge
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return out.unflatten(0, x.shape[:-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, weight, lora_a, lora_b, xa = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        rows = len(grad)
        # in half precision `flat` and `xa` carry the forward's padding rows: grad gets the same
        grad = grad.to(dtype) if ctx.merge else _half_rows(grad, dtype)
        need_x, need_w, need_b, need_a, need_lb = ctx.needs_input_grad[:5]
        grad_x = grad_w = grad_bias = grad_a = grad_lb = None
        grad_xa = None
        if need_x and ctx.merge:
            # W' is rebuilt rather than kept: activation memory stays peft's
            n_in = weight.shape[1]
            if need_a and n_in <= weight.shape[0]:
                both = grad @ _merged_stack(weight, lora_a, lora_b, s, dim=1)
                grad_x, grad_xa = both[:, :n_in], both[:, n_in : n_in + lora_a.shape[0]]
            else:
                grad_x = grad @ torch.addmm(weight, lora_b, lora_a, alpha=s)
                grad_xa = grad @ lora_b if need_a else None
        elif need_a or need_x:
            grad_xa = grad @ lora_b.to(dtype)
            if need_x:
                grad_x = (grad @ weight.to(dtype)).addmm_(grad_xa, lora_a.to(dtype), alpha=s)
        if need_x:
            grad_x = grad_x[:rows].unflatten(0, ctx.x_shape[:-1]).to(ctx.x_dtype)
        if need_a:
            grad_a = (grad_xa.t() @ flat).to(lora_a.dtype).mul_(s)
        if need_lb:
            grad_lb = (xa.t() @ grad).t().to(lora_b.dtype).mul_(s)
        # the base weight and bias are frozen under LoRA; they get gradients only if unfrozen
        if need_w:
            grad_w = (grad.t() @ flat).to(weight.dtype)
        if need_b:
            grad_bias = grad.sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_bias, grad_a, grad_lb, None, None, None


class _FusedForward:
    """The fused forward, mixed in ahead of a peft layer class (LoRA's Linear, AdaLoRA's
    SVDLinear): peft's parameters, state dict, merge/unmerge and adapter files are kept; only
    `forward` differs, and it falls back to peft's whenever the layer is not one plain, active,
    unmerged adapter on an nn.Linear."""

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """(A, B, s) with the adapter's update s * B @ A, or None where it cannot be fused."""
        raise NotImplementedError

    def _fusable_adapter(self, args: tuple, kwargs: dict) -> str | None:
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        dropout = self.lora_dropout[name]
        base = self.base_layer
        if (
            type(base) is not nn.Linear
            or self.fan_in_fan_out
            or (self.training and isinstance(dropout, nn.Dropout) and dropout.p > 0)
            # ZeRO-3 gathers a module's weights in its own forward hook, which this path skips
            or hasattr(base.weight, "ds_id")
        ):
            return None
        return name

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        weight = self.base_layer.weight
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        elif x.dtype == weight.dtype:
            dtype = weight.dtype
        else:  # mixed dtypes without autocast: peft's casting rules apply
            return super().forward(x, *args, **kwargs)
        name = self._fusable_adapter(args, kwargs)
        factors = None if name is None else self._factors(name)
        if factors is None:
            return super().forward(x, *args, **kwargs)
        lora_a, lora_b, scaling = factors
        with torch.autocast(device, enabled=False):
            return _FusedLoraLinear.apply(
                x,
                weight,
                self.base_layer.bias,
                lora_a,
                lora_b,
                scaling,
                dtype,
                torch.is_grad_enabled(),
            )


class FusedLoraLinear(_FusedForward, LoraLinear):
    """peft's LoRA Linear with the fused forward where that is the same function."""

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        lora_a = self.lora_A[name].weight
        if (
            name in self.lora_variant  # DoRA and the like
            or self.lora_B[name].bias is not None
            or hasattr(lora_a, "ds_id")
        ):
            return None
        return lora_a, self.lora_B[name].weight, self.scaling[name]


class FusedSVDLinear(_FusedForward, SVDLinear):
    """peft's AdaLoRA SVDLinear with the fused forward.

    peft adds (x @ (A * E)^T @ B^T) * scaling / (ranknum + 1e-5): a LoRA update whose A is
    A * E with the scale folded in (a small [r, in] product that autograd differentiates into
    A and E). Pruning masks E in place and keeps the shapes, so a pruned layer fuses the same.
    """

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        lora_a = self.lora_A[name]
        if hasattr(lora_a, "ds_id"):
            return None
        # the scale stays a tensor: reading ranknum into a float would sync a GPU every call
        scale = self.scaling[name] / (self.ranknum[name] + 1e-5)
        return lora_a * self.lora_E[name] * scale, self.lora_B[name], 1.0


_FUSED = {LoraLinear: FusedLoraLinear, SVDLinear: FusedSVDLinear}


def fuse_lora(model: nn.Module) -> int:
    """Give every peft LoRA and AdaLoRA Linear in `model` the fused forward; returns how many."""
    return sum(_swap_class(model, old, new) for old, new in _FUSED.items())


def unfuse_lora(model: nn.Module) -> int:
    """Back to peft's own forward (benchmarks compare the two on one set of weights)."""
    return sum(_swap_class(model, new, old) for old, new in _FUSED.items())


def _swap_class(model: nn.Module, old: type, new: type) -> int:
    # the two classes share every attribute; only the forward differs
    swapped = [m for m in model.modules() if type(m) is old]
    for module in swapped:
        module.__class__ = new
    return len(swapped)
