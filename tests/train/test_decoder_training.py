"""Tiny random decoders of every family train for real on the tiny corpus and export exactly.

Each family's model is built from its own transformers config class (Qwen2Config, Qwen3Config,
LlamaConfig, Gemma2Config, Gemma3TextConfig, MistralConfig, Phi3Config) over the tokenizer trained
on the tiny corpus: the loss falls, the LoRA weights move, and the Hugging Face export loads back
(through AutoModel, as the family's own class) and scores like the trained model.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModel

from tests.conftest import tiny_config

FAMILIES = {
    "qwen2": "Qwen2Model",
    "qwen3": "Qwen3Model",
    "llama": "LlamaModel",
    "gemma2": "Gemma2Model",
    "gemma3_text": "Gemma3TextModel",
    "mistral": "MistralModel",
    "phi3": "Phi3Model",
}

DECODER = [
    "model.pooling=last",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.num_layers=2",
    "model.intermediate_size=64",
    "model.dropout=0",
    "adapter.modules_to_save=[embed_tokens]",
    "train.steps=30",
    "train.lr=5e-3",
    "train.log_every=5",
    "eval.max_impressions=60",
]


def losses(run_dir) -> list[float]:
    acc = EventAccumulator(f"{run_dir}/tb")
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def batch_args(shards_dir):
    from mlrec.data.loader import train_loader

    loader = train_loader(
        shards_dir, batch_size=8, negatives=4, max_history=10, seed=1, num_workers=0
    )
    batch = next(iter(loader))
    return [batch[k] for k in ("item_ids", "item_mask", "history", "history_mask", "candidates")]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_family_trains_and_exports_exactly(tmp_path, tiny_shards, family):
    from mlrec.export.hf import export_model, load_export
    from mlrec.train.trainer import Trainer

    cfg = tiny_config(
        tmp_path / "run",
        f"data.shards_dir={tiny_shards}",
        f"model.architecture={family}",
        *DECODER,
        "export.onnx=false",
    )
    trainer = Trainer(cfg)
    try:
        model = trainer.recommender
        assert type(model.item_encoder.backbone.get_base_model()).__name__ == FAMILIES[family]
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        assert before, "no LoRA weights: the family's default target modules matched nothing"
        trainer.train()
        after = dict(model.named_parameters())
        moved = [n for n in before if not torch.equal(before[n], after[n])]
        assert len(moved) == len(before), sorted(set(before) - set(moved))[:4]
        curve = losses(cfg.run_dir)
        assert len(curve) == 6 and curve[-1] < curve[0] - 0.05, curve
        args = batch_args(tiny_shards)
        model.eval()
        with torch.no_grad():
            trained = model(*args)
        export = export_model(model, trainer.tokenizer, cfg, tmp_path / "export")
    finally:
        trainer.close()
    plain = AutoModel.from_pretrained(str(export))
    assert type(plain).__name__ == FAMILIES[family]
    assert not any("lora" in name for name, _ in plain.named_parameters())
    exported, _, _ = load_export(export)
    assert exported.item_encoder.decoder == model.item_encoder.decoder
    with torch.no_grad():
        torch.testing.assert_close(exported(*args), trained, rtol=1e-4, atol=1e-4)
    if family == "qwen2":  # what ONNX cannot take is said, not exported wrong
        from mlrec.config import ConfigError
        from mlrec.export.onnx_models import export_onnx

        with pytest.raises(ConfigError, match="export.onnx: .* decoder-only item encoder"):
            export_onnx(export)


def test_training_on_the_layer_cache_trains_the_top_layers_only(tmp_path, tiny_shards):
    from mlrec.models.layer_cache import CACHE_DIR
    from mlrec.train.trainer import Trainer

    shards = tmp_path / "shards"  # the cache is written beside the shards: a copy of its own
    shutil.copytree(tiny_shards, shards)
    overrides = [
        f"data.shards_dir={shards}",
        "model.architecture=qwen2",
        *DECODER,
        "model.num_layers=3",
        "model.layer_cache=1",
        "adapter.modules_to_save=[]",
    ]
    cfg = tiny_config(tmp_path / "run", *overrides)
    trainer = Trainer(cfg)
    try:
        model = trainer.recommender
        assert model.item_encoder.layer_cache is not None
        lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        assert lora and all(".layers.2." in n for n in lora)
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers.0." in n}
        metrics = trainer.train()
        after = dict(model.named_parameters())
        assert all(not torch.equal(lora[n], after[n]) for n in lora)
        assert all(torch.equal(frozen[n], after[n]) for n in frozen)
        curve = losses(cfg.run_dir)
        assert curve[-1] < curve[0] - 0.05, curve
        assert metrics["overall"]["scored"] > 0
    finally:
        trainer.close()
    assert (shards / CACHE_DIR / "meta.json").is_file()
