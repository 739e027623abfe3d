"""Grouping a batch's items by length, so that each group is padded only to its own longest item.

A batch of item texts is padded to its longest item, and an encoder's cost grows with the padded
token count. Sorting the items by length and cutting the sorted list into a few groups, each
trimmed to its longest member, removes most of that padding at the price of one more encoder
call per group. The cut points are chosen exactly (dynamic programming over the distinct
lengths) to minimise padded tokens plus a fixed cost per extra call.
"""

from __future__ import annotations

import numpy as np
import torch

# An extra encoder call must save at least this share of the batch's padded tokens. Measured on
# tools/bench_train.py's model on CPU: 187 items encoded as groups of 60 (26 tokens) and 127 (32)
# instead of one 32-token block saved 6% of the tokens and about 5% of the encoder's time, so a
# call costs little next to the padding it removes; the floor keeps a handful of items from
# being split off on their own.
MIN_SAVING = 0.02


def item_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Per row: the position after its last real token (its length once trailing pads are cut)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.to(torch.long) * positions).amax(dim=1)


def length_groups(mask: torch.Tensor, max_groups: int) -> list[tuple[torch.Tensor, int]]:
    """Rows of `mask` [items, tokens] split into at most `max_groups` (indices, padded length)."""
    lengths = item_lengths(mask).clamp(min=1)
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].cpu().numpy()
    distinct, counts = np.unique(sorted_lengths, return_counts=True)
    ends = _cuts(distinct, counts, max_groups, MIN_SAVING * len(sorted_lengths) * distinct[-1])
    rows_through = np.cumsum(counts)  # sorted rows with a length at or below distinct[i]
    groups, start = [], 0
    for end in ends:  # end: index into `distinct` of the group's longest length
        stop = int(rows_through[end])
        groups.append((order[start:stop], int(distinct[end])))
        start = stop
    return groups


def _cuts(distinct: np.ndarray, counts: np.ndarray, max_groups: int, penalty: float) -> list[int]:
    """Last distinct-length index of each group, minimising sum(rows * length) + penalty/group."""
    n = len(distinct)
    rows_before = np.concatenate([[0], np.cumsum(counts)])  # rows with length index < i
    # best[k][j]: least cost covering distinct lengths 0..j with k + 1 groups
    best = np.full((max_groups, n), np.inf)
    back = np.zeros((max_groups, n), dtype=np.int64)
    best[0] = rows_before[1:] * distinct
    for k in range(1, max_groups):
        for j in range(k, n):
            # the last group covers i..j: its rows are padded to distinct[j]
            i = np.arange(k, j + 1)
            cost = best[k - 1][i - 1] + (rows_before[j + 1] - rows_before[i]) * distinct[j]
            pick = int(np.argmin(cost))
            best[k][j], back[k][j] = cost[pick], i[pick]
    totals = best[:, n - 1] + penalty * np.arange(max_groups)
    k = int(np.argmin(totals))
    ends, j = [], n - 1
    while k >= 0:
        ends.append(j)
        j = int(back[k][j]) - 1
        k -= 1
    return ends[::-1]
