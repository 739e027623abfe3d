"""The scores behind an evaluation, written out for other scorers and for MIND's leaderboard.

  predictions.tsv   a header `impression<TAB>candidate<TAB>score`, then one line per candidate of
                    every impression read: impression id, the candidate as nid@lang (items/
                    index.tsv), the score as repr of the float (round-trips exactly)
  prediction.txt    MIND's leaderboard format: `<impression id> [r1,r2,...]`, r_i the 1-based
                    rank of candidate i (impression order) by descending score

prediction.txt follows what msnews/MIND's evaluate.py reads: `parse_line` splits a line on
whitespace into exactly two fields and json-loads the second, so the list holds no spaces; it
walks truth.txt and prediction.txt line by line and stops at a line whose impression id differs,
and truth.txt follows behaviors.tsv, whose impression ids count up, so the lines go in ascending
impression id. It scores 1 / rank, so ranks must be distinct: ties are broken by candidate order,
as our MRR and nDCG break them (our AUC counts a tie as half; tied scores are the one case where
the two can differ).

Both files hold scored and unscored impressions alike (an impression without a click still has
scores), one line per impression read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlrec import io

PREDICTIONS = "predictions.tsv"
LEADERBOARD = "prediction.txt"
HEADER = "impression\tcandidate\tscore"

# (impression id, candidate rows of the item table in impression order, their scores)
Scored = tuple[int, Sequence[int], Sequence[float]]


def ranks(scores: Sequence[float]) -> list[int]:
    """1-based rank of each candidate when sorted by descending score, ties by candidate order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(1, len(order) + 1)
    return out.tolist()


def leaderboard_line(impression: int, scores: Sequence[float]) -> str:
    return f"{impression} [{','.join(map(str, ranks(scores)))}]\n"


def write_predictions(
    out_dir: str | Path, impressions: Sequence[Scored], keys: Sequence[str]
) -> None:
    """Write predictions.tsv and prediction.txt into out_dir; `keys` maps an item-table row to
    its nid@lang. Impressions are written in ascending id (see the module docstring)."""
    out_dir = Path(out_dir)
    tsv = [HEADER + "\n"]
    board = []
    for impression, rows, scores in sorted(impressions, key=lambda imp: imp[0]):
        values = np.asarray(scores, dtype=np.float64).tolist()  # Python floats: repr is exact
        for row, score in zip(rows, values, strict=True):
            tsv.append(f"{impression}\t{keys[row]}\t{score!r}\n")
        board.append(leaderboard_line(impression, values))
    io.write_text(out_dir / PREDICTIONS, "".join(tsv))
    io.write_text(out_dir / LEADERBOARD, "".join(board))
