import itertools

import pytest
import torch

from mlrec.config import load_config
from mlrec.data.loader import train_loader
from mlrec.models.adapters import adapt_backbone, merged_backbone
from mlrec.models.recommender import build_recommender


def _model(*overrides):
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            "model.hidden_size=32",
            "model.num_heads=2",
            "model.user_heads=2",
            "model.intermediate_size=64",
            *overrides,
        ],
    )
    return build_recommender(cfg.model, vocab_size=4000, pad_token_id=1).eval(), cfg


def _batch(shards):
    loader = train_loader(shards, batch_size=6, negatives=4, max_history=10, seed=0, num_workers=0)
    return next(itertools.islice(loader, 1, None))


@pytest.mark.parametrize("user_encoder", ["attention", "mean"])
def test_deduplicated_batch_scores_like_encoding_every_item(tiny_shards, user_encoder):
    model, _ = _model(f"model.user_encoder={user_encoder}")
    b = _batch(tiny_shards)
    with torch.no_grad():
        scores = model(
            b["item_ids"], b["item_mask"], b["history"], b["history_mask"], b["candidates"]
        )
        # the naive way: encode each history item and candidate of each sample on its own
        for i in range(len(b["labels"])):

            def enc(rows):
                ids = b["item_ids"][rows]
                return model.item_encoder(ids, ids != 1)

            hist = enc(b["history"][i][b["history_mask"][i]])
            user = model.user_encoder(hist[None], torch.ones(1, len(hist), dtype=torch.bool))
            naive = enc(b["candidates"][i]) @ user[0]
            torch.testing.assert_close(scores[i], naive, rtol=1e-4, atol=1e-4)


def test_empty_history_gives_finite_scores(tiny_shards):
    model, _ = _model()
    b = _batch(tiny_shards)
    b["history_mask"][0] = False
    with torch.no_grad():
        scores = model(
            b["item_ids"], b["item_mask"], b["history"], b["history_mask"], b["candidates"]
        )
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_adapters_train_few_parameters_and_merge_exactly(tiny_shards, method):
    model, cfg = _model(f"adapter.method={method}")
    total = sum(p.numel() for p in model.item_encoder.backbone.parameters())
    backbone = adapt_backbone(model.item_encoder.backbone, cfg.adapter, total_steps=100)
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert 0 < trainable < total
    # move the adapters away from their zero init so that merging has something to fold in
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.item_encoder.backbone = backbone
    b = _batch(tiny_shards)
    with torch.no_grad():
        before = model.item_encoder(b["item_ids"], b["item_mask"])
        model.item_encoder.backbone = merged_backbone(backbone)
        after = model.item_encoder(b["item_ids"], b["item_mask"])
    assert not hasattr(model.item_encoder.backbone, "peft_config")
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)


def test_frozen_trains_only_the_heads():
    model, cfg = _model("adapter.method=frozen")
    backbone = adapt_backbone(model.item_encoder.backbone, cfg.adapter, total_steps=10)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert any(p.requires_grad for p in model.user_encoder.parameters())


def test_loads_a_pretrained_encoder_from_a_local_folder(tmp_path):
    model, _ = _model()
    model.item_encoder.backbone.save_pretrained(tmp_path / "enc")
    again, _ = _model(f"model.name_or_path={tmp_path / 'enc'}")
    ids = torch.tensor([[0, 10, 11, 12, 2]])
    with torch.no_grad():
        a = model.item_encoder(ids, torch.ones_like(ids, dtype=torch.bool))
        b = again.item_encoder(ids, torch.ones_like(ids, dtype=torch.bool))
    torch.testing.assert_close(a, b)


def test_in_batch_scores_hold_each_rows_own_candidates(tiny_shards):
    model, _ = _model()
    b = _batch(tiny_shards)
    args = [b[k] for k in ("item_ids", "item_mask", "history", "history_mask", "candidates")]
    with torch.no_grad():
        own = model(*args)
        every = model(*args, in_batch=True)
    rows, per_row = b["candidates"].shape
    assert every.shape == (rows, rows * per_row)
    for r in range(rows):
        torch.testing.assert_close(every[r, r * per_row : (r + 1) * per_row], own[r])
