"""Negatives for click logs: the items a click is scored against when the log records no
impressions (what was shown and not clicked), drawn from the clicked item's own language.

  uniform         every other item of the language alike;
  popularity      in proportion to 1 + the item's clicks in the training part of the log, so
                  that popular items, which a user is likely to have seen and passed over, are
                  drawn more often (word2vec-style frequency sampling, without its power);
  same-category   only items of the clicked item's category, so that the category alone cannot
                  tell the click from the negatives (harder, closer to a real feed).

The clicked item and the user's history are never negatives. A pool with fewer items than
asked gives fewer negatives. A same-category pool that the history has used up (a small
category, a long history) is topped up with one draw from the whole language, and counted in
`outside_category`; an empty language pool is a row error (the caller's policy decides).

Speed: a draw per call of numpy's generator costs ~10 µs, more than the rest of a click's
conversion; candidates are drawn 4096 at a time per pool and handed out in order, so the
result is still a pure function of the seed and the order of the calls.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

ItemRow = int  # a row of the catalog (the item table's order)
_BLOCK = 4096
_TRIES = 16  # draws per wanted negative before the exact draw over what is left


class _Pool:
    """The rows of one language (or language and category), with their weights."""

    def __init__(self, rows: list[int], weights: np.ndarray | None) -> None:
        self.rows = np.array(rows, dtype=np.int64)
        self.weights = None if weights is None else weights[self.rows]
        self.cdf = None if self.weights is None else np.cumsum(self.weights / self.weights.sum())
        self.drawn: list[int] = []

    def next(self, rng: np.random.Generator) -> int:
        if not self.drawn:
            if self.cdf is None:
                picks = rng.integers(0, len(self.rows), _BLOCK)
            else:
                picks = np.minimum(
                    np.searchsorted(self.cdf, rng.random(_BLOCK)), len(self.rows) - 1
                )
            self.drawn = self.rows[picks][::-1].tolist()  # popped from the end: drawn order
        return self.drawn.pop()

    def exact(self, rng: np.random.Generator, banned: Collection[int], n: int) -> list[int]:
        """Up to n distinct rows not in `banned`, drawn over all that are left."""
        left = np.array([r for r in self.rows.tolist() if r not in banned], dtype=np.int64)
        if not len(left):
            return []
        p = None
        if self.weights is not None:
            w = self.weights[np.searchsorted(self.rows, left)]
            p = w / w.sum()
        return rng.choice(left, size=min(n, len(left)), replace=False, p=p).tolist()


class NegativeSampler:
    """Draws negatives for (clicked row, excluded rows) from one seeded generator."""

    def __init__(
        self,
        languages: list[str],
        categories: list[str],
        how: str,
        per_click: int,
        seed: int,
        clicks: np.ndarray | None = None,
    ) -> None:
        """`languages` and `categories`: per catalog row; `clicks`: per row (popularity)."""
        self.per_click = per_click
        self.rng = np.random.default_rng(seed)
        weights = clicks.astype(np.float64) + 1.0 if how == "popularity" else None
        by_language: dict[str, list[int]] = {}
        by_group: dict[tuple[str, str], list[int]] = {}
        for row, (lang, category) in enumerate(zip(languages, categories, strict=True)):
            by_language.setdefault(lang, []).append(row)
            by_group.setdefault((lang, category if how == "same-category" else ""), []).append(row)
        groups = {g: _Pool(rows, weights) for g, rows in by_group.items()}
        self.pool_of = [groups[(lang, c if how == "same-category" else "")]
                        for lang, c in zip(languages, categories, strict=True)]  # fmt: skip
        self.language_pool = None
        if how == "same-category":
            pools = {lang: _Pool(rows, None) for lang, rows in by_language.items()}
            self.language_pool = [pools[lang] for lang in languages]
        self.outside_category = 0
        self._places: list[float] = []

    def sample(self, row: ItemRow, exclude: Collection[ItemRow]) -> list[ItemRow]:
        """Up to `per_click` distinct negatives for a click on `row`, none of them `row` nor
        in `exclude` (the user's history)."""
        pool, n = self.pool_of[row], self.per_click
        picked: list[int] = []
        for _ in range(_TRIES * n):
            candidate = pool.next(self.rng)
            if candidate != row and candidate not in exclude and candidate not in picked:
                picked.append(candidate)
                if len(picked) == n:
                    return picked
        banned = {row, *exclude, *picked}
        picked += pool.exact(self.rng, banned, n - len(picked))
        if not picked and self.language_pool is not None:
            picked = self.language_pool[row].exact(self.rng, banned, 1)
            self.outside_category += bool(picked)
        return picked

    def place(self, candidates: int) -> int:
        """Where the click goes among `candidates` (uniform), so it is not always first."""
        if not self._places:
            self._places = self.rng.random(_BLOCK).tolist()
        return int(self._places.pop() * candidates)
