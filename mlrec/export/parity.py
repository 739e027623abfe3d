"""The parity check every export runs: ONNX fp32 and int8 against torch on held-out data.

Held-out data: the first `export.parity_impressions` impressions of the dev shards and every item
they show or hold in a history. Each ONNX variant must give item and user vectors within a cosine
of the torch model's (MIN_COSINE) and rank the impressions' candidates as well (MAX_AUC_CHANGE on
MIND's mean per-impression AUC). The report goes to onnx/parity.json whether or not it passes, and
a failure raises ParityError, which makes `mlrec export` exit non-zero.
"""

from __future__ import annotations

import json
import logging
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PARITY_FILE = "onnx/parity.json"
MIN_COSINE = {"fp32": 0.999, "int8": 0.99}
# int8 may reorder near-ties; a change this large means the quantised model ranks differently.
MAX_AUC_CHANGE = {"fp32": 0.001, "int8": 0.01}


class ParityError(RuntimeError):
    """An exported ONNX model does not reproduce the torch model."""


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; rows that are zero in both (users without history) agree exactly."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na < 1e-12) & (nb < 1e-12)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)
    return np.where(both_zero, 1.0, cos)


def _score(backend, table, impressions, pad_id, batch_size, max_history) -> dict[str, Any]:
    from mlrec.evaluation.encode import encode_rows, pad_histories
    from mlrec.evaluation.metrics import impression_metrics

    rows = sorted({r for imp in impressions for r in (*imp["history"], *imp["candidates"])})
    position = {r: i for i, r in enumerate(rows)}
    items = encode_rows(backend, table, np.asarray(rows), pad_id, batch_size)
    histories = [[position[r] for r in imp["history"][-max_history:]] for imp in impressions]
    users = backend.users(*pad_histories(items, histories))
    aucs, top = [], []
    for imp, user in zip(impressions, users, strict=True):
        scores = items[[position[r] for r in imp["candidates"]]] @ user
        top.append(int(np.argmax(scores)))
        metrics = impression_metrics(imp["labels"], scores.tolist())
        if metrics is not None:
            aucs.append(metrics["auc"])
    return {"items": items, "users": users, "top": np.asarray(top), "auc": float(np.mean(aucs))}


def check_parity(
    export_dir: str | Path,
    shards_dir: str | Path,
    impressions: int,
    trust_remote_code: bool = False,
) -> dict:
    """Compare the ONNX models of `export_dir` with torch; write the report; raise on failure."""
    from mlrec.data.layout import ITEM_TOKENS, dev_splits, load_manifest, shard_files
    from mlrec.data.loader import read_impressions
    from mlrec.export.backends import OnnxBackend, TorchBackend

    export_dir = Path(export_dir)
    reference = TorchBackend(export_dir, trust_remote_code=trust_remote_code)
    cfg = reference.cfg
    # the first dev set: parity compares backends, one held-out set is enough
    first = dev_splits(shards_dir)[0]
    held_out = list(islice(read_impressions(shard_files(shards_dir, first)), impressions))
    if not held_out:
        raise FileNotFoundError(f"no dev impressions in {shards_dir} for the parity check")
    table = np.load(Path(shards_dir) / ITEM_TOKENS, mmap_mode="r")
    pad_id = load_manifest(shards_dir)["tokenizer"]["pad_token_id"]
    args = (table, held_out, pad_id, cfg.eval.batch_size, cfg.data.max_history)
    torch_run = _score(reference, *args)
    report: dict[str, Any] = {
        "dim": int(reference.dim),
        "held_out": {"impressions": len(held_out), "items": len(torch_run["items"])},
        "thresholds": {"min_cosine": MIN_COSINE, "max_auc_change": MAX_AUC_CHANGE},
        "torch": {"auc": torch_run["auc"]},
    }
    failures = []
    for precision in ("fp32", "int8"):
        run = _score(OnnxBackend(export_dir, precision), *args)
        item_cos = _cosines(run["items"], torch_run["items"])
        user_cos = _cosines(run["users"], torch_run["users"])
        row = {
            "item_cosine_min": float(item_cos.min()),
            "item_cosine_mean": float(item_cos.mean()),
            "user_cosine_min": float(user_cos.min()),
            "auc": run["auc"],
            "auc_change": run["auc"] - torch_run["auc"],
            "top1_agreement": float((run["top"] == torch_run["top"]).mean()),
        }
        cosine = min(row["item_cosine_min"], row["user_cosine_min"])
        if not cosine >= MIN_COSINE[precision]:  # `not >=` also catches NaN
            failures.append(
                f"{precision}: minimum cosine {cosine:.6f} < {MIN_COSINE[precision]} "
                f"(items {row['item_cosine_min']:.6f}, users {row['user_cosine_min']:.6f})"
            )
        if not abs(row["auc_change"]) <= MAX_AUC_CHANGE[precision]:
            failures.append(
                f"{precision}: AUC {row['auc']:.4f} vs torch {torch_run['auc']:.4f} "
                f"(change {row['auc_change']:+.4f}, allowed ±{MAX_AUC_CHANGE[precision]})"
            )
        row["passed"] = not any(f.startswith(precision) for f in failures)
        report[precision] = row
    report["passed"] = not failures
    out = export_dir / PARITY_FILE
    out.write_text(json.dumps(report, indent=2))
    if failures:
        raise ParityError(
            f"ONNX parity check failed on held-out dev data (report: {PARITY_FILE} in the "
            "export):\n  " + "\n  ".join(failures)
        )
    log.info(
        "ONNX parity: cosine fp32 %.6f, int8 %.6f; AUC change fp32 %+.5f, int8 %+.5f (%s)",
        report["fp32"]["item_cosine_min"],
        report["int8"]["item_cosine_min"],
        report["fp32"]["auc_change"],
        report["int8"]["auc_change"],
        out,
    )
    return report
