"""Zero-shot cross-lingual transfer, as xMIND measures it: the same impressions in a target
language and in the reference language (usually the one training clicks were in).

For every target-language impression whose history and candidates all exist in the reference
language (same news ids), the impression is scored twice: as shown (target texts) and with every
item swapped for its reference-language version. The difference of the two on exactly the same
impressions is the ZS-XLT loss; impressions that cannot be swapped are counted, not dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from mlrec.evaluation.metrics import METRICS
from mlrec.languages import format_ref, parse_ref

# what a swapped impression is missing, for the counts
MISSING_IN_REFERENCE = "an item has no reference-language version"


class Swapper:
    """Maps item-table rows to the rows of the same news in the reference language."""

    def __init__(self, keys: Sequence[str], reference_language: str) -> None:
        """`keys`: the item table's keys ("nid@lang") in row order."""
        self.reference = reference_language
        row_of = {key: row for row, key in enumerate(keys)}
        self.swap: list[int | None] = [
            row_of.get(format_ref((parse_ref(key, "")[0], reference_language))) for key in keys
        ]

    def __call__(self, impression: dict[str, Any]) -> dict[str, Any] | None:
        """The impression in the reference language, or None when an item has no version. It
        keeps its "lang" (the target language), so its metrics are reported under it."""
        rows = {}
        for row in (*impression["history"], *impression["candidates"]):
            swapped = self.swap[row]
            if swapped is None:
                return None
            rows[row] = swapped
        return {
            **impression,
            "history": [rows[r] for r in impression["history"]],
            "candidates": [rows[r] for r in impression["candidates"]],
        }


def paired(
    impressions: Sequence[dict[str, Any]], swapper: Swapper
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(target impressions, their reference versions, per language how many could not be
    swapped), for the impressions not already in the reference language."""
    targets, references, missing = [], [], Counter()
    for imp in impressions:
        if imp["lang"] == swapper.reference:
            continue
        swapped = swapper(imp)
        if swapped is None:
            missing[imp["lang"]] += 1
            continue
        targets.append(imp)
        references.append(swapped)
    return targets, references, dict(sorted(missing.items()))


def transfer_table(
    target: dict[str, Any], reference: dict[str, Any], missing: dict[str, int]
) -> dict[str, Any]:
    """Per target language: the metrics there and on the same impressions in the reference
    language, the gap (target - reference: the ZS-XLT loss, negative when transfer loses), and
    the impressions that could not be paired. `target` and `reference` are `summarize` outputs
    of the paired impressions (both keyed by the target language, see Swapper)."""
    out: dict[str, Any] = {}
    for lang, row in target["by_language"].items():
        ref = reference["by_language"][lang]
        # the same impressions on both sides, so the same ones are scorable
        scored = [m for m in METRICS if m in row and m in ref]
        out[lang] = {
            "paired": row["read"],
            "unpaired": missing.get(lang, 0),
            "target": {m: row[m] for m in scored},
            "reference": {m: ref[m] for m in scored},
            "gap": {m: row[m] - ref[m] for m in scored},
        }
    return out


def spread(by_language: dict[str, dict[str, Any]], metric: str = "auc") -> dict[str, Any]:
    """Best minus worst language on `metric`: uneven quality is what multilingual users see."""
    scored = {lang: row[metric] for lang, row in by_language.items() if metric in row}
    if not scored:
        return {}
    best, worst = max(scored, key=scored.get), min(scored, key=scored.get)
    return {"metric": metric, "best": best, "worst": worst, "spread": scored[best] - scored[worst]}
