"""The frozen-layer cache: same vectors and gradients as the full model, rebuilt when stale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlrec.config import ConfigError, load_config
from mlrec.data.layout import ITEM_TOKENS, load_manifest
from mlrec.models.adapters import adapt_backbone
from mlrec.models.layer_cache import CACHE_DIR, META, attach_layer_cache
from mlrec.models.recommender import build_recommender

FAMILIES = ["qwen2", "qwen3", "llama", "gemma2", "gemma3_text", "mistral", "phi3"]


def _encoder(family: str, top: int = 1, dtype: str = "float32", seed: int = 0):
    torch.manual_seed(seed)
    cfg = load_config(
        None,
        [
            f"model.architecture={family}",
            "model.pooling=last",
            "model.hidden_size=32",
            "model.num_heads=4",
            "model.num_layers=3",
            "model.intermediate_size=64",
            "model.dropout=0",
            f"model.layer_cache={top}",
            f"model.layer_cache_dtype={dtype}",
            "adapter.modules_to_save=[]",
        ],
    )
    model = build_recommender(cfg.model, vocab_size=4000, pad_token_id=1)
    model.item_encoder.backbone = adapt_backbone(model.item_encoder.backbone, cfg.adapter, 10, top)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # trained-looking adapters, so the top layers are not the identity
            torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(2))
    return model.item_encoder


def _attach(encoder, shards, top=1, dtype="float32", root=None):
    return attach_layer_cache(
        encoder,
        top,
        dtype,
        shards / ITEM_TOKENS,
        load_manifest(shards)["tokenizer"]["sha256"],
        1,
        root,
    )


def _items(shards, rows=slice(0, 40)):
    table = np.load(shards / ITEM_TOKENS)[rows]
    ids = torch.from_numpy(table.astype(np.int64))
    return ids, ids != 1


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_top_layers_match_the_full_model(tiny_shards, tmp_path, family):
    encoder = _encoder(family)
    _attach(encoder, tiny_shards, root=tmp_path)
    ids, mask = _items(tiny_shards)
    full = encoder.eval()(ids, mask)
    cached = encoder.train()(ids, mask)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    # the same gradients for the adapters of the top layer; the cached layers get none
    cached.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.requires_grad}
    encoder.zero_grad()
    encoder.layer_cache = None
    encoder.train()(ids, mask).square().sum().backward()
    for name, grad in grads.items():
        torch.testing.assert_close(
            grad, dict(encoder.named_parameters())[name].grad, rtol=1e-3, atol=1e-4
        )
    assert all(".layers.2." in n for n in grads if "lora_" in n)


def test_half_precision_cache_is_close(tiny_shards, tmp_path):
    for dtype, tol in (("float16", 2e-3), ("bfloat16", 2e-2)):
        encoder = _encoder("qwen2", dtype=dtype)
        _attach(encoder, tiny_shards, dtype=dtype, root=tmp_path / dtype)
        ids, mask = _items(tiny_shards)
        torch.testing.assert_close(
            encoder.train()(ids, mask), encoder.eval()(ids, mask), rtol=tol, atol=tol
        )


def test_cache_is_reused_and_rebuilt_when_what_it_depends_on_changes(tiny_shards, tmp_path):
    encoder = _encoder("llama")
    _attach(encoder, tiny_shards, root=tmp_path)
    states = tmp_path / CACHE_DIR / "states.npy"
    built = states.stat().st_mtime_ns
    _attach(_encoder("llama"), tiny_shards, root=tmp_path)  # same weights: reused
    assert states.stat().st_mtime_ns == built

    def meta():
        import json

        return json.loads((tmp_path / CACHE_DIR / META).read_text())

    # other bottom weights (another backbone): rebuilt, and the new states are the right ones
    other = _encoder("llama", seed=5)
    _attach(other, tiny_shards, root=tmp_path)
    assert states.stat().st_mtime_ns != built
    ids, mask = _items(tiny_shards)
    torch.testing.assert_close(other.train()(ids, mask), other.eval()(ids, mask))
    weights = meta()["weights"]
    # another split (L - k)
    deeper = _encoder("llama", seed=5, top=2)
    _attach(deeper, tiny_shards, top=2, root=tmp_path)
    assert meta()["split_layer"] == 1 and meta()["weights"] != weights
    torch.testing.assert_close(deeper.train()(ids, mask), deeper.eval()(ids, mask))
    # another tokenizer
    attach_layer_cache(deeper, 2, "float32", tiny_shards / ITEM_TOKENS, "other", 1, tmp_path)
    assert meta()["tokenizer_sha256"] == "other"
    # a cache whose meta is gone (a killed build) is rebuilt, not trusted
    (tmp_path / CACHE_DIR / META).unlink()
    _attach(deeper, tiny_shards, top=2, root=tmp_path)
    assert (tmp_path / CACHE_DIR / META).is_file()


def test_an_item_missing_from_the_cache_is_an_error(tiny_shards, tmp_path):
    encoder = _encoder("qwen3")
    _attach(encoder, tiny_shards, root=tmp_path)
    ids = torch.tensor([[3999, 3998, 3997, 5]])
    with pytest.raises(ConfigError, match="1 of 1 items of a batch are not in the cache"):
        encoder.train()(ids, ids != 1)


def test_layer_cache_config_rules():
    base = ["model.architecture=qwen2", "model.num_layers=4"]
    with pytest.raises(ConfigError, match="adapter.modules_to_save must be"):
        load_config(None, [*base, "model.layer_cache=2"])
    with pytest.raises(ConfigError, match="model.layer_cache must be below model.num_layers"):
        load_config(None, [*base, "model.layer_cache=4", "adapter.modules_to_save=[]"])
    with pytest.raises(ConfigError, match="adapter.method must be lora or adalora"):
        load_config(
            None,
            [*base, "model.layer_cache=2", "adapter.modules_to_save=[]", "adapter.method=full"],
        )
    # an encoder (BERT family) has no cache
    cfg = load_config(None, ["model.layer_cache=1", "adapter.modules_to_save=[]"])
    model = build_recommender(cfg.model, 300, 1)
    with pytest.raises(ConfigError, match="needs a decoder-only item encoder"):
        attach_layer_cache(model.item_encoder, 1, "float16", None, "", 1, None)
