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
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mlrec.languages import ItemKey

_ROUNDS = 8  # rounds of drawing with replacement before the exact draw over what is left


class NegativeSampler:
    """Draws negatives for (item, excluded items) from one seeded generator, in call order."""

    def __init__(
        self,
        keys: list[ItemKey],
        categories: list[str],
        how: str,
        per_click: int,
        seed: int,
        clicks: np.ndarray | None = None,
    ) -> None:
        self.keys = keys
        self.index = {key: i for i, key in enumerate(keys)}
        self.categories = categories
        self.how = how
        self.per_click = per_click
        self.rng = np.random.default_rng(seed)
        self.weights = None if clicks is None else clicks.astype(np.float64) + 1.0
        pools: dict[tuple[str, str], list[int]] = {}
        for i, (_, lang) in enumerate(keys):
            group = categories[i] if how == "same-category" else ""
            pools.setdefault((lang, group), []).append(i)
        self.pools = {group: np.array(rows, dtype=np.int64) for group, rows in pools.items()}
        self.p = {}
        if how == "popularity" and self.weights is not None:
            self.p = {g: self.weights[r] / self.weights[r].sum() for g, r in self.pools.items()}
        self.languages: dict[str, np.ndarray] = {}
        if how == "same-category":
            by_language: dict[str, list[int]] = {}
            for i, (_, lang) in enumerate(keys):
                by_language.setdefault(lang, []).append(i)
            self.languages = {lang: np.array(r, dtype=np.int64) for lang, r in by_language.items()}
        self.outside_category = 0

    def pool_of(self, key: ItemKey) -> tuple[str, str]:
        row = self.index[key]
        return key[1], self.categories[row] if self.how == "same-category" else ""

    def sample(self, key: ItemKey, exclude: Iterable[ItemKey]) -> list[ItemKey]:
        """Up to `per_click` distinct negatives for a click on `key`, none of them `key` nor in
        `exclude` (the user's history)."""
        group = self.pool_of(key)
        banned = {self.index[k] for k in exclude if k in self.index}
        banned.add(self.index[key])
        picked = self._draw(self.pools[group], self.p.get(group), banned, self.per_click)
        if not picked and self.languages:
            picked = self._draw(self.languages[key[1]], None, banned, 1)
            self.outside_category += bool(picked)
        return [self.keys[r] for r in picked]

    def _draw(self, pool: np.ndarray, p: np.ndarray | None, banned: set[int], n: int) -> list[int]:
        """Up to n distinct rows of `pool` (weighted by `p`), none in `banned`."""
        picked: list[int] = []
        for _ in range(_ROUNDS):  # cheap while the pool is much larger than what is banned
            for row in self.rng.choice(pool, size=2 * n, p=p).tolist():
                if row not in banned:
                    banned.add(row)
                    picked.append(row)
                    if len(picked) == n:
                        return picked
        left = np.array([r for r in pool.tolist() if r not in banned], dtype=np.int64)
        if len(left):
            q = None if p is None else self.weights[left] / self.weights[left].sum()
            take = min(n - len(picked), len(left))
            picked += self.rng.choice(left, size=take, replace=False, p=q).tolist()
        return picked
