"""MIND's ranking metrics, computed per impression and averaged per language and overall.

As in the MIND benchmark, AUC is computed within each impression and then averaged over
impressions; this mean of per-impression AUCs is what MIND reports as "AUC" and is often called
group AUC. MRR and nDCG@k are also per impression (nDCG with gains 2^label - 1, as MIND's scorer).
Impressions without both a clicked and an unclicked candidate have no AUC and are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

METRICS = ("auc", "mrr", "ndcg@5", "ndcg@10")


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Probability that a clicked candidate outscores an unclicked one (ties count half)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs at least one clicked and one unclicked candidate")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _ranked(labels: Sequence[int], scores: Sequence[float]) -> np.ndarray:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.asarray(labels, dtype=np.float64)[order]


def mrr(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Mean reciprocal rank of the clicked candidates, as MIND's scorer defines it."""
    ranked = _ranked(labels, scores)
    return float((ranked / np.arange(1, len(ranked) + 1)).sum() / ranked.sum())


def _dcg(ranked: np.ndarray, k: int) -> float:
    top = ranked[:k]
    return float(((2**top - 1) / np.log2(np.arange(2, len(top) + 2))).sum())


def ndcg(labels: Sequence[int], scores: Sequence[float], k: int) -> float:
    ideal = _dcg(np.sort(np.asarray(labels, dtype=np.float64))[::-1], k)
    return _dcg(_ranked(labels, scores), k) / ideal


def impression_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float] | None:
    """All metrics of one impression, or None when it cannot be scored (all 0 or all 1 labels)."""
    if not 0 < sum(labels) < len(labels):
        return None
    return {
        "auc": auc(labels, scores),
        "mrr": mrr(labels, scores),
        "ndcg@5": ndcg(labels, scores, 5),
        "ndcg@10": ndcg(labels, scores, 10),
    }


def summarize(records: Iterable[tuple[str, dict[str, float]]]) -> dict[str, Any]:
    """(language, per-impression metrics) pairs -> {"overall": ..., "by_language": {...}}."""
    by_language: dict[str, list[dict[str, float]]] = defaultdict(list)
    everything: list[dict[str, float]] = []
    for lang, metrics in records:
        by_language[lang].append(metrics)
        everything.append(metrics)

    def mean(rows: list[dict[str, float]]) -> dict[str, Any]:
        out: dict[str, Any] = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
        out["impressions"] = len(rows)
        return out

    if not everything:
        raise ValueError("no impression could be scored (each needs a click and a non-click)")
    return {
        "overall": mean(everything),
        "by_language": {lang: mean(rows) for lang, rows in sorted(by_language.items())},
    }


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of the per-language and overall metrics."""
    header = f"{'language':<10}{'impressions':>12}" + "".join(f"{m:>10}" for m in METRICS)
    lines = [header, "-" * len(header)]
    rows = [*metrics["by_language"].items(), ("overall", metrics["overall"])]
    for name, row in rows:
        cells = "".join(f"{row[m]:>10.4f}" for m in METRICS)
        lines.append(f"{name:<10}{row['impressions']:>12}{cells}")
    return "\n".join(lines)
