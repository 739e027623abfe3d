"""The model card (README.md) of an export: what the model is, how to load it, how well it ranks."""

from __future__ import annotations

from typing import Any

from mlrec.config import Config
from mlrec.evaluation.metrics import METRICS


def _table(metrics: dict[str, Any]) -> str:
    head = "| language | impressions | " + " | ".join(METRICS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(METRICS)]
    rows = [*metrics["by_language"].items(), ("**overall**", metrics["overall"])]
    for name, row in rows:
        cells = " | ".join(f"{row[m]:.4f}" for m in METRICS)
        lines.append(f"| {name} | {row['impressions']} | {cells} |")
    return "\n".join(lines)


def model_card(cfg: Config, metrics: dict[str, Any] | None) -> str:
    """Markdown with Hugging Face front matter; `metrics` is the run's eval/metrics.json."""
    languages = sorted(metrics["by_language"]) if metrics else []
    front = ["---", "library_name: transformers", "pipeline_tag: feature-extraction"]
    front += ["tags: [mlrec, recommendation, news-recommendation, multilingual]"]
    if languages:
        front += ["language:", *(f"- {lang}" for lang in languages)]
    front += ["---"]
    base = cfg.model.name_or_path or (
        f"a randomly initialised XLM-R ({cfg.model.hidden_size} wide, {cfg.model.num_layers} "
        "layers) trained from scratch"
    )
    evaluation = (
        "Held-out impressions of the dev split; per impression, then averaged (MIND's metrics: "
        "`auc` is the mean per-impression AUC).\n\n" + _table(metrics)
        if metrics
        else "The run was exported before it was evaluated: no figures."
    )
    return "\n".join(
        [
            *front,
            "",
            "# mlrec recommender",
            "",
            f"A two-tower news recommender trained with mlrec. Item encoder: {base}, "
            f"{cfg.model.pooling} pooling, adapter `{cfg.adapter.method}` merged into the "
            f"weights. User encoder: `{cfg.model.user_encoder}` over the last "
            f"{cfg.data.max_history} clicked items. Score: dot product of item and user vectors.",
            "",
            "## Files",
            "",
            "- `config.json`, `model.safetensors`, tokenizer files: the item encoder's backbone",
            "- `mlrec_heads.safetensors`: pooling projection and user encoder",
            "- `mlrec_config.yaml`: the resolved mlrec config of the run; `metrics.json`",
            "- `catalog/`: the item table (token rows and ids) the service embeds at start",
            "- `onnx/`: ONNX item and user encoders, fp32 and int8, and `parity.json`",
            "",
            "## Loading",
            "",
            "```python",
            "from transformers import AutoModel, AutoTokenizer",
            "backbone = AutoModel.from_pretrained(EXPORT_DIR)  # the item encoder's backbone",
            "from mlrec.export.hf import load_export",
            "model, tokenizer, cfg = load_export(EXPORT_DIR)  # the whole recommender",
            "```",
            "",
            "Serve it with `mlrec serve EXPORT_DIR`.",
            "",
            "## Evaluation",
            "",
            evaluation,
            "",
        ]
    )
