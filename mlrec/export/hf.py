"""Exporting a trained run in Hugging Face format, and loading such an export back.

Layout of an export folder:
  config.json, model.safetensors    the item encoder's backbone, adapters merged into its weights:
  tokenizer files                   `transformers.AutoModel.from_pretrained(EXPORT)` loads it
  mlrec_heads.safetensors           pooling projection and user encoder weights
  mlrec_config.yaml                 the run's resolved mlrec config
  metrics.json                      the run's evaluation, when it has one
  README.md                         the model card, with the evaluation table per language
  catalog/tokens.npy, index.tsv     the item table of the run's shards: what `mlrec serve` ranks
  catalog/vectors.<backend>.npy     its item vectors, precomputed for `mlrec serve` (.json: the
                                    model and catalog they belong to; see mlrec.serve.vectors)
  onnx/                             ONNX models and parity report (mlrec.export.onnx_models)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from mlrec.config import Config, config_from_dict
from mlrec.data.layout import ITEM_INDEX, ITEM_TOKENS
from mlrec.data.tokenizer import load_tokenizer
from mlrec.export.card import model_card
from mlrec.models.adapters import merged_backbone
from mlrec.models.decoders import weights_dtype
from mlrec.models.recommender import (
    Recommender,
    build_user_encoder,
    item_encoder_for,
    load_backbone,
)

HEADS_FILE = "mlrec_heads.safetensors"
CONFIG_FILE = "mlrec_config.yaml"
CATALOG_DIR = "catalog"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")


def export_model(model: Recommender, tokenizer, cfg: Config, out_dir: str | Path) -> Path:
    """Write `model` (adapters merged) with its tokenizer and config to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = merged_backbone(model.item_encoder.backbone)
    model.item_encoder.backbone = backbone  # merged: the trained model is not used afterwards
    backbone.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    heads = {f"projection.{k}": v for k, v in model.item_encoder.projection.state_dict().items()}
    heads.update({f"user_encoder.{k}": v for k, v in model.user_encoder.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(out / HEADS_FILE))
    cfg.save(out / CONFIG_FILE)
    metrics_file = Path(cfg.run_dir) / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    if metrics is not None:
        shutil.copy(metrics_file, out / "metrics.json")
    (out / "README.md").write_text(model_card(cfg, metrics), encoding="utf-8")
    # The catalog travels with the model, so a serving host needs the export folder only.
    (out / CATALOG_DIR).mkdir(exist_ok=True)
    # Vectors from an earlier export into this folder belong to that model (`mlrec serve` would
    # refuse them anyway); mlrec.pipeline.export writes this model's after the ONNX models.
    for stale in (out / CATALOG_DIR).glob("vectors.*"):
        stale.unlink()
    for name in (ITEM_TOKENS, ITEM_INDEX):
        shutil.copy(cfg.shards_dir / name, out / CATALOG_DIR / Path(name).name)
    return out


def load_export(
    export_dir: str | Path, trust_remote_code: bool = False
) -> tuple[Recommender, object, Config]:
    """Rebuild the recommender, its tokenizer and config from an export folder (no pickle).

    Code shipped in the folder runs only with trust_remote_code, which is the caller's to give:
    the saved config never turns it on (mlrec.hub)."""
    export_dir = Path(export_dir)
    # Pickled weights (pytorch_model.bin) can run code when loaded: only safetensors are read.
    if not any((export_dir / name).is_file() for name in SAFETENSORS_FILES):
        raise FileNotFoundError(
            f"{export_dir} holds no {' or '.join(SAFETENSORS_FILES)}: mlrec loads safetensors "
            "only (re-export the run with `mlrec export`)"
        )
    cfg = config_from_dict(
        yaml.safe_load((export_dir / CONFIG_FILE).read_text()), str(export_dir / CONFIG_FILE)
    )
    backbone = load_backbone(str(export_dir), trust_remote_code, weights_dtype(cfg.model))
    item_encoder = item_encoder_for(backbone, cfg.model)
    model = Recommender(item_encoder, build_user_encoder(cfg.model, item_encoder.dim))
    heads = load_file(str(export_dir / HEADS_FILE))
    item_encoder.projection.load_state_dict(
        {k.removeprefix("projection."): v for k, v in heads.items() if k.startswith("projection.")}
    )
    model.user_encoder.load_state_dict(
        {
            k.removeprefix("user_encoder."): v
            for k, v in heads.items()
            if k.startswith("user_encoder.")
        }
    )
    tokenizer = load_tokenizer(export_dir, trust_remote_code)
    return model.eval(), tokenizer, cfg
