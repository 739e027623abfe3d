"""The merged-weight LoRA forward computes peft's function and gradients, and falls back to peft's
forward wherever it would not."""

import copy

import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from peft.tuners.adalora.layer import SVDLinear
from peft.tuners.lora.layer import Linear as LoraLinear
from safetensors.torch import load_file
from torch import nn

from mlrec.models import fused_lora
from mlrec.models.adapters import adalora_rank, adapt_backbone, merged_backbone
from mlrec.models.fused_lora import FusedLoraLinear, FusedSVDLinear, fuse_lora, unfuse_lora
from tests.models.test_recommender import _model


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 48)
        self.down = nn.Linear(48, 8, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _pair(dropout: float = 0.0, train_base: bool = False):
    torch.manual_seed(0)
    # init_lora_weights=False: B starts non-zero, so every gradient path carries signal
    config = LoraConfig(
        r=4,
        lora_alpha=12,
        lora_dropout=dropout,
        target_modules=["up", "down"],
        init_lora_weights=False,
    )
    return _peft_and_fused(TwoLayers(), config, train_base)


def _peft_and_fused(module: nn.Module, config, train_base: bool):
    """`module` under peft's LoRA, and a fused copy of it with the same weights."""
    peft_model = get_peft_model(module, config)
    if train_base:
        for name, param in peft_model.named_parameters():
            if "base_layer" in name:
                param.requires_grad_(True)
    fused = copy.deepcopy(peft_model)
    assert fuse_lora(fused) == len(config.target_modules)
    return peft_model, fused


def _forward_backward(model, x, autocast: bool = False):
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    (y.float() ** 2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("train_base", [False, True])
def test_same_outputs_and_gradients_as_peft(train_base):
    peft_model, fused = _pair(train_base=train_base)
    x = torch.randn(3, 7, 16)
    y0, dx0, g0 = _forward_backward(peft_model, x)
    y1, dx1, g1 = _forward_backward(fused, x)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g0.keys()
    assert any("lora_A" in n for n in g0) and any("lora_B" in n for n in g0)
    assert any("base_layer" in n for n in g0) == train_base
    with torch.no_grad():  # inference skips what only the backward pass needs
        torch.testing.assert_close(fused(x), peft_model(x), rtol=1e-5, atol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("train_base", [False, True])
@pytest.mark.parametrize("align", [fused_lora.ALIGN, 1])
@pytest.mark.parametrize(
    ("n_in", "n_out", "bias", "rank"),
    [(24, 24, True, 8), (24, 24, False, 5), (40, 24, True, 8), (24, 40, True, 16)],
)
def test_stacked_products_give_peft_s_outputs_and_gradients(
    n_in, n_out, bias, rank, align, train_base
):
    # square, narrowing and widening layers take the stacked forward, backward or both, with
    # padding (rank 5 or 8) or none (rank 16), with and without a bias; align=1: no padding;
    # train_base: the base weight and bias get gradients too (the bias is padded in the stack)
    torch.manual_seed(0)
    config = LoraConfig(r=rank, lora_alpha=16, target_modules=["0"], init_lora_weights=False)
    layer = nn.Sequential(nn.Linear(n_in, n_out, bias=bias))
    peft_model, fused = _peft_and_fused(layer, config, train_base)
    x = torch.randn(2, 9, n_in)
    y0, dx0, g0 = _forward_backward(peft_model, x)
    old, fused_lora.ALIGN = fused_lora.ALIGN, align
    try:
        y1, dx1, g1 = _forward_backward(fused, x)
    finally:
        fused_lora.ALIGN = old
    assert y1.shape == y0.shape == (2, 9, n_out)
    assert g1.keys() == g0.keys() and any("base_layer" in n for n in g0) == train_base
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("train_base", [False, True])
def test_bf16_autocast_matches_peft_in_bf16(train_base):
    # 20 rows: the half-precision path pads them to 64 (padded_rows), and nothing of the padding
    # may reach the outputs or the gradients (of the base weight and bias too, with train_base)
    peft_model, fused = _pair(train_base=train_base)
    x = torch.randn(4, 5, 16)
    y0, dx0, g0 = _forward_backward(peft_model, x, autocast=True)
    y1, dx1, g1 = _forward_backward(fused, x, autocast=True)
    assert y1.dtype == y0.dtype == torch.bfloat16 and dx1.dtype == torch.float32
    assert all(g1[n].dtype == torch.float32 for n in g1)
    # bf16 keeps 8 bits of mantissa: the two orders of summation agree to about 1%
    torch.testing.assert_close(y1.float(), y0.float(), rtol=0.03, atol=0.03)
    for name in g0:
        scale = g0[name].abs().max()
        assert (g1[name] - g0[name]).abs().max() <= 0.03 * scale, name


def test_padded_rows_repeat_few_sizes_and_waste_little():
    sizes = {fused_lora.padded_rows(rows) for rows in range(1, 8193)}
    assert all(size % 64 == 0 for size in sizes)
    assert len(sizes) <= 8 * 4 + 8  # 64..512 in steps of 64, then 8 per power of two
    for rows in range(512, 8193):
        assert rows <= fused_lora.padded_rows(rows) <= rows * 1.125


def test_falls_back_to_peft_where_merging_would_change_the_function():
    # dropout on the LoRA input only: the merged weight would drop the base path too
    peft_model, fused = _pair(dropout=0.5)
    x = torch.randn(2, 3, 16)
    torch.manual_seed(1)
    y0 = peft_model(x)
    torch.manual_seed(1)
    y1 = fused(x)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)  # the very same computation
    # in eval mode dropout is the identity, and the merged path is used (same function)
    torch.testing.assert_close(fused.eval()(x), peft_model.eval()(x), rtol=1e-5, atol=1e-5)

    peft_model, fused = _pair()
    with fused.disable_adapter(), peft_model.disable_adapter():
        torch.testing.assert_close(fused(x), peft_model.base_model.model(x))
    fused.merge_adapter()
    peft_model.merge_adapter()
    torch.testing.assert_close(fused(x), peft_model(x), rtol=1e-5, atol=1e-5)


def test_adapter_files_and_merge_are_peft_s(tmp_path):
    peft_model, fused = _pair()
    peft_model.save_pretrained(tmp_path / "peft")
    fused.save_pretrained(tmp_path / "fused")
    a = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fused" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    x = torch.randn(2, 16)
    expected = fused(x)
    merged = fused.merge_and_unload()
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)
    assert unfuse_lora(peft_model) == 0  # nothing fused there to undo


def test_adalora_layers_give_peft_s_outputs_gradients_files_and_merge(tmp_path):
    torch.manual_seed(0)
    config = AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["up", "down"])
    peft_model = get_peft_model(TwoLayers(), config)
    with torch.no_grad():  # E starts at zero (no update, no gradient for A and B): move it
        for name, param in peft_model.named_parameters():
            if "lora_E" in name:
                param.normal_()
                param[1] = 0.0  # a rank pruned away, as update_and_allocate masks it
    fused = copy.deepcopy(peft_model)
    assert fuse_lora(fused) == 2
    assert {type(m) for m in fused.modules()} >= {FusedSVDLinear}
    x = torch.randn(3, 7, 16)
    y0, dx0, g0 = _forward_backward(peft_model, x)
    y1, dx1, g1 = _forward_backward(fused, x)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-5)
    assert {n for n in g0 if "lora_E" in n} and g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)
    peft_model.save_pretrained(tmp_path / "peft")
    fused.save_pretrained(tmp_path / "fused")
    a = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fused" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_E" in key for key in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    merged = copy.deepcopy(fused).merge_and_unload()
    assert not any(isinstance(m, SVDLinear) for m in merged.modules())
    torch.testing.assert_close(merged(x), y1, rtol=1e-5, atol=1e-5)
    assert unfuse_lora(fused) == 2 and FusedSVDLinear not in {type(m) for m in fused.modules()}


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_adapter_config_switches_fusion_and_training_matches_peft(method):
    def build(fused: bool):
        model, cfg = _model(
            "model.dropout=0.0", f"adapter.method={method}", f"adapter.fused={str(fused).lower()}"
        )
        model.item_encoder.backbone = adapt_backbone(model.item_encoder.backbone, cfg.adapter, 10)
        return model

    models = {fused: build(fused) for fused in (False, True)}
    kinds = {f: {type(m) for m in model.modules()} for f, model in models.items()}
    peft_class, fused_class = {
        "lora": (LoraLinear, FusedLoraLinear),
        "adalora": (SVDLinear, FusedSVDLinear),
    }[method]
    assert fused_class in kinds[True] and peft_class not in kinds[True]
    assert fused_class not in kinds[False] and peft_class in kinds[False]

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (12, 9), generator=gen)
    mask = torch.arange(9)[None] < torch.randint(2, 10, (12, 1), generator=gen)
    history = torch.randint(0, 12, (4, 5), generator=gen)
    candidates = torch.randint(0, 12, (4, 3), generator=gen)
    losses, ranks = {}, {}
    for fused, model in models.items():
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        losses[fused] = []
        for _ in range(5):
            scores = model(
                ids, mask, history, torch.ones_like(history, dtype=torch.bool), candidates
            )
            loss = nn.functional.cross_entropy(scores, torch.zeros(4, dtype=torch.long))
            loss.backward()
            optimizer.step()
            if method == "adalora":  # prunes ranks from the gradients, as the trainer does
                model.item_encoder.backbone.base_model.update_and_allocate(len(losses[fused]))
            optimizer.zero_grad()
            losses[fused].append(loss.item())
        ranks[fused] = adalora_rank(model.item_encoder.backbone)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[True][-1] < losses[True][0]  # it trains
    assert ranks[True] == ranks[False]
    if method == "adalora":  # pruning ran (init_r 12 -> target 8 per matrix), fused or not
        assert ranks[True] < 12 * sum(isinstance(m, SVDLinear) for m in models[True].modules())
    plain = merged_backbone(models[True].item_encoder.backbone)
    assert not any(isinstance(m, LoraLinear) for m in plain.modules())


def test_half_precision_weights_keep_an_update_below_the_weights_rounding_step():
    # base row [1, -1] on x = [1, 1] gives exactly 0; the LoRA update adds 1e-3 to the first
    # weight, less than bf16's step at 1.0 (2^-7): folded into the weight it would vanish
    layer = nn.Linear(2, 1, bias=False)
    config = LoraConfig(r=1, lora_alpha=1, target_modules=["0"], init_lora_weights=False)
    models = {}
    for fused in (False, True):
        model = get_peft_model(nn.Sequential(copy.deepcopy(layer)), config)
        if fused:
            fuse_lora(model)
        lora = model.base_model.model[0]
        with torch.no_grad():
            lora.base_layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
            lora.lora_A["default"].weight.copy_(torch.tensor([[1.0, 0.0]]))
            lora.lora_B["default"].weight.fill_(1e-3)
        models[fused] = model.to(torch.bfloat16)
    x = torch.ones(1, 2, dtype=torch.bfloat16)
    out = {fused: model(x).float().item() for fused, model in models.items()}
    assert out[True] == pytest.approx(1e-3, rel=0.01) and out[False] == pytest.approx(
        1e-3, rel=0.01
    )
