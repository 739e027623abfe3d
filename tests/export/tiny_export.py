"""An export of a tiny, untrained recommender, built in seconds without a training run.

Export and serving tests need a real export folder but not a trained model: parity and the
service must hold for any weights. LoRA adapters are attached so that the merge path runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import tiny_config

LANGUAGES = ["en", "de", "ru", "ar", "zh", "ja"]


def make_export(root: Path, shards_dir: Path, *, onnx: bool = True) -> Path:
    from mlrec.data.layout import TOKENIZER_DIR, load_manifest
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.export.hf import export_model
    from mlrec.export.onnx_models import export_onnx
    from mlrec.models.adapters import adapt_backbone
    from mlrec.models.recommender import build_recommender

    cfg = tiny_config(root, f"data.shards_dir={shards_dir}")
    tokenizer = load_tokenizer(shards_dir / TOKENIZER_DIR)
    pad_id = load_manifest(shards_dir)["tokenizer"]["pad_token_id"]
    model = build_recommender(cfg.model, len(tokenizer), pad_id)
    model.item_encoder.backbone = adapt_backbone(model.item_encoder.backbone, cfg.adapter, 10)
    # made-up evaluation figures: the model card must show whatever the run measured
    row = {"auc": 0.61, "mrr": 0.32, "ndcg@5": 0.37, "ndcg@10": 0.45, "impressions": 10}
    metrics = {"overall": {**row, "impressions": 60}, "by_language": dict.fromkeys(LANGUAGES, row)}
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "metrics.json").write_text(json.dumps(metrics))
    out = export_model(model.eval(), tokenizer, cfg, root / "export")
    if onnx:
        export_onnx(out)
    return out
