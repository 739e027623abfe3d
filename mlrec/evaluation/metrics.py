"""MIND's ranking metrics, computed per impression and averaged per language and overall.

As in the MIND benchmark, AUC is computed within each impression and then averaged over
impressions; this mean of per-impression AUCs is what MIND reports as "AUC" and is often called
group AUC. MRR and nDCG@k are also per impression (nDCG with gains 2^label - 1, as MIND's scorer).
Impressions without both a clicked and an unclicked candidate have no AUC and no score; they
are not dropped without a word: `summarize` counts them per reason beside the scored ones, so
each row says read = scored + sum(unscored).
"""

from __future__ import annotations

from collections import Counter, defaultdict
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


NO_CLICK = "no click"
ALL_CLICKED = "all clicked"
UNSCORED_REASONS = (NO_CLICK, ALL_CLICKED)


def unscored_reason(labels: Sequence[int]) -> str | None:
    """Why an impression cannot be scored (one of UNSCORED_REASONS), or None when it can."""
    clicks = sum(labels)
    if clicks == 0:
        return NO_CLICK
    if clicks == len(labels):
        return ALL_CLICKED
    return None


def impression_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float] | None:
    """All metrics of one impression, or None when it cannot be scored (all 0 or all 1 labels)."""
    if unscored_reason(labels) is not None:
        return None
    return {
        "auc": auc(labels, scores),
        "mrr": mrr(labels, scores),
        "ndcg@5": ndcg(labels, scores, 5),
        "ndcg@10": ndcg(labels, scores, 10),
    }


def summarize(
    records: Iterable[tuple[str, dict[str, float]]],
    unscored: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """(language, per-impression metrics) pairs of the scored impressions and (language, reason)
    pairs of the unscored ones -> {"overall": ..., "by_language": {...}}.

    Each row holds the metric means over its scored impressions, "impressions" (the scored count,
    as readers of older metrics.json expect), "read", "scored" and "unscored" (reason -> count,
    every reason listed); a language none of whose impressions could be scored still has a row,
    with the counts and no metric keys.
    """
    by_language: dict[str, list[dict[str, float]]] = defaultdict(list)
    everything: list[dict[str, float]] = []
    for lang, metrics in records:
        by_language[lang].append(metrics)
        everything.append(metrics)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for lang, reason in unscored:
        if reason not in UNSCORED_REASONS:
            raise ValueError(f"unknown reason {reason!r}; one of {', '.join(UNSCORED_REASONS)}")
        reasons[lang][reason] += 1
        by_language.setdefault(lang, [])

    def row(rows: list[dict[str, float]], why: Counter[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if rows:
            out = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
        counts = {reason: why[reason] for reason in UNSCORED_REASONS}
        out["impressions"] = len(rows)
        out["read"] = len(rows) + sum(counts.values())
        out["scored"] = len(rows)
        out["unscored"] = counts
        return out

    total = sum(reasons.values(), Counter())
    if not everything:
        # nothing to average: a loud error, not a table of zeros
        raise ValueError(
            "no impression could be scored (each needs a click and a non-click); unscored: "
            f"{dict(total) or 'none read'}"
        )
    return {
        "overall": row(everything, total),
        "by_language": {
            lang: row(rows, reasons[lang]) for lang, rows in sorted(by_language.items())
        },
    }


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of the per-language and overall metrics; a row without metrics (none of
    its impressions could be scored) shows "-", and rows of older metrics.json (no read count)
    show their scored count as read."""
    header = f"{'language':<10}{'read':>8}{'scored':>8}" + "".join(f"{m:>10}" for m in METRICS)
    lines = [header, "-" * len(header)]
    rows = [*metrics["by_language"].items(), ("overall", metrics["overall"])]
    for name, row in rows:
        cells = "".join(f"{row[m]:>10.4f}" if m in row else f"{'-':>10}" for m in METRICS)
        scored = row["impressions"]
        lines.append(f"{name:<10}{row.get('read', scored):>8}{scored:>8}{cells}")
    if "limited_to" in metrics:
        lines.append(f"(eval.max_impressions: only the first {metrics['limited_to']} were read)")
    return "\n".join(lines)


def format_comparison(metrics: dict[str, Any], metric: str = "auc") -> str:
    """`metric` per language for the model beside each baseline (scored on the same
    impressions), and the transfer gap when there is one; "" when there is nothing to compare."""
    baselines = metrics.get("baselines", {})
    transfer = metrics.get("transfer", {}).get("model", {})
    if not baselines and not transfer:
        return ""
    names = ["model", *baselines]
    # the model minus the frozen teacher on the same impressions, with its paired error
    paired = metrics.get("paired", {}).get("model", {}) if metric == "auc" else {}
    header = f"{metric:<10}" + "".join(f"{n:>22}" for n in names)
    header += f"{'transfer gap':>16}" if transfer else ""
    header += f"{'model - teacher (se)':>24}" if paired else ""
    lines = [header, "-" * len(header)]
    languages = [*metrics["by_language"], "overall"]
    for lang in languages:
        tables = [metrics] + [baselines[n] for n in baselines]
        rows = [
            t["overall"] if lang == "overall" else t["by_language"].get(lang, {}) for t in tables
        ]
        cells = "".join(f"{r[metric]:>22.4f}" if metric in r else f"{'-':>22}" for r in rows)
        if transfer:
            gap = transfer.get(lang, {}).get("gap", {}).get(metric)
            cells += f"{gap:>+16.4f}" if gap is not None else f"{'-':>16}"
        if paired:
            row = paired.get(lang)
            cells += f"{row['diff']:>+15.4f} ({row['se']:.4f})" if row else f"{'-':>24}"
        lines.append(f"{lang:<10}{cells}")
    return "\n".join(lines)
