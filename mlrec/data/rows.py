"""Row accounting for every corpus file: what was read, kept, and skipped, and why.

`data.on_error` chooses the policy for a malformed row: `strict` stops at the first one with
`file:line: reason`; `skip` drops the row, counts it per reason for its file, and the counts go to
the manifest and the log. Either way each file satisfies rows = kept + duplicates + skipped, so no
row disappears without a trace (blank lines are not rows).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

# Why a row was rejected; the keys of the per-file `skipped` counts.
COLUMNS = "wrong column count"
UNKNOWN_ITEM = "unknown news id"
BAD_LABEL = "bad label"
BAD_ID = "bad impression id"
NO_IMPRESSIONS = "no impressions"
ENCODING = "undecodable text"
EMPTY_TITLE = "empty title"
EMPTY_ID = "empty news id"
BAD_NEWS_ID = "bad news id"
NO_CLICK = "no clicked candidate"
DUPLICATE_IMPRESSION = "duplicate impression id"
# tables (mlrec.data.table_corpus)
EMPTY_LANGUAGE = "empty or bad language"
EMPTY_USER = "empty user id"
BAD_TIME = "missing time"
AMBIGUOUS_ITEM = "item in several languages"
NO_NEGATIVE = "no item to draw negatives from"

POLICIES = ("strict", "skip")
_WARN_FIRST = 5  # rejected rows logged one by one per file before only counting


class DataError(ValueError):
    """A corpus row that cannot be used; the message names file and line."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class RowLog:
    """Per-file row counts; `reject` raises under `strict` and counts under `skip`."""

    def __init__(self, policy: str = "strict", warn: bool = True) -> None:
        if policy not in POLICIES:
            raise ValueError(f"data.on_error must be one of {', '.join(POLICIES)}; got {policy!r}")
        self.policy = policy
        self.warn = warn  # off for re-reads of a file whose rejects were already reported
        self.files: dict[str, dict[str, Any]] = {}

    def file(self, path: Any) -> dict[str, Any]:
        # called for every row: look up before building a fresh dict of counts
        counts = self.files.get(str(path))
        if counts is None:
            counts = self.files[str(path)] = {"rows": 0, "kept": 0, "duplicates": 0, "skipped": {}}
        return counts

    def count(self, path: Any, what: str, n: int = 1) -> None:
        self.file(path)[what] += n

    def reject(self, path: Any, err: DataError) -> None:
        if self.policy == "strict":
            raise err
        skipped = self.file(path)["skipped"]
        if self.warn and sum(skipped.values()) < _WARN_FIRST:
            log.warning("skipping %s", err)
        skipped[err.reason] = skipped.get(err.reason, 0) + 1

    def merge(self, files: dict[str, dict[str, Any]]) -> None:
        """Add counts written by another process (a shard unit's record)."""
        for path, counts in files.items():
            mine = self.file(path)
            for key in ("rows", "kept", "duplicates"):
                mine[key] += counts[key]
            mine["skipped"] = dict(Counter(mine["skipped"]) + Counter(counts["skipped"]))

    def skipped_total(self) -> int:
        return sum(sum(c["skipped"].values()) for c in self.files.values())

    def summary(self) -> dict[str, Any]:
        return {
            "on_error": self.policy,
            "files": {
                p: {**c, "skipped": dict(sorted(c["skipped"].items()))}
                for p, c in sorted(self.files.items())
            },
        }
