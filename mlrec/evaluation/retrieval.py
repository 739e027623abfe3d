"""Translation retrieval: for each held-out source sentence, is its own translation the nearest
(cosine) of all the held-out translations? Top-1 accuracy per target language, as in Reimers &
Gurevych (2020) and the Tatoeba/BUCC evaluations."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlrec.data.parallel import Pair

RETRIEVAL_FILE = "retrieval.json"  # <run_dir>/eval/: written by `mlrec align`, read by report


def top1(sources: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows i whose most cosine-similar target row is i."""
    if len(sources) != len(targets) or not len(sources):
        raise ValueError("retrieval needs as many targets as sources, at least one")
    s = sources / np.maximum(np.linalg.norm(sources, axis=1, keepdims=True), 1e-12)
    t = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    return float((np.argmax(s @ t.T, axis=1) == np.arange(len(s))).mean())


def retrieval_accuracy(
    encode: Callable[[list[str]], np.ndarray], heldout: dict[str, list[Pair]]
) -> dict[str, float]:
    """Top-1 source -> target per target language, plus their mean as `mean`."""
    scores = {
        lang: top1(encode([p.source for p in pairs]), encode([p.target for p in pairs]))
        for lang, pairs in sorted(heldout.items())
        if len(pairs) >= 2
    }
    if scores:
        scores["mean"] = float(np.mean(list(scores.values())))
    return scores
