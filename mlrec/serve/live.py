"""The catalog while it changes: immutable snapshots swapped whole, and the log that keeps changes.

The export's items (the base: their vectors, and the ANN index over them) never change in place.
Items added over HTTP go into a small delta segment searched exactly, beside the index; a delete
or an update marks the old row dead (an update adds the new version as a delta row). Each change
builds a new `Snapshot` (delta arrays and the dead mask copied, the base shared) and swaps it in
under the writer lock; a reader takes the current snapshot once per request, so it sees the
catalog before a change or after it, never between.

`catalog/updates.jsonl` in the export holds every change, one JSON line per request, appended and
fsync'd before the change is visible and the client gets its answer, and replayed at every start.
A put records the text and the vector with the encoder that computed it: replay reuses the vector
when the service runs that encoder, and encodes the text again when it does not. A crash while
a line is written leaves it without its newline; such a torn last line was never acknowledged,
so replay drops it (and cuts it from the file) with a warning. Any other unreadable line is an
error naming the file and line: the log was damaged, and guessing would lose updates silently.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mlrec.data.rows import DataError
from mlrec.serve.catalog import Catalog

log = logging.getLogger(__name__)

UPDATES_FILE = "updates.jsonl"


@dataclass(frozen=True)
class NewItem:
    id: str  # N123@de
    language: str
    text: str
    category: str = ""
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Snapshot:
    """One consistent state of the catalog. Rows below `base_rows` are the export's, the rest
    the delta's; `delta_ids` is shared between snapshots and only appended to, so each snapshot
    reads its first `size - base_rows` entries."""

    base: Catalog
    delta_ids: list[str]
    delta_languages: np.ndarray
    delta_vectors: np.ndarray
    size: int
    dead: np.ndarray  # bool [size]: deleted, or replaced by a later row
    changed: dict[str, int | None] = field(default_factory=dict)  # id -> its row now, or None
    categories: dict[int, str] = field(default_factory=dict)  # row -> category (delta rows)

    @property
    def base_rows(self) -> int:
        return len(self.base)

    @property
    def live_items(self) -> int:
        return self.size - int(self.dead.sum())

    def row(self, key: str) -> int | None:
        if key in self.changed:
            return self.changed[key]
        return self.base.row_of.get(key)

    def id(self, row: int) -> str:
        nb = self.base_rows
        return self.base.ids[row] if row < nb else self.delta_ids[row - nb]

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        nb = self.base_rows
        out = np.empty((len(rows), self.base.vectors.shape[1]), dtype=np.float32)
        old = rows < nb
        out[old] = self.base.vectors[rows[old]]
        out[~old] = self.delta_vectors[rows[~old] - nb]
        return out

    def delta_rows(self, languages: list[str] | None) -> np.ndarray:
        """Live delta rows, in these languages (None: all)."""
        count = self.size - self.base_rows
        alive = ~self.dead[self.base_rows :]
        if languages is not None:
            alive &= np.isin(self.delta_languages[:count], languages)
        return self.base_rows + np.flatnonzero(alive)

    def category_of(self, row: int) -> str:
        if row < self.base_rows:
            return self.base.categories[row]
        return self.categories.get(row, "")

    def language_of(self, row: int) -> str:
        nb = self.base_rows
        return str(self.base.languages[row] if row < nb else self.delta_languages[row - nb])


class LiveCatalog:
    """The current Snapshot, the writer lock and the update log."""

    def __init__(
        self,
        base: Catalog,
        log_path: Path,
        encoder: str,
        encode: Callable[[list[str]], np.ndarray],
    ) -> None:
        self.log_path = log_path
        self.encoder = encoder  # identity of the vectors' encoder (backend + its files' sha256)
        self._lock = threading.Lock()
        dim = base.vectors.shape[1]
        self.snapshot = Snapshot(
            base=base,
            delta_ids=[],
            delta_languages=np.zeros(0, dtype="<U16"),
            delta_vectors=np.zeros((0, dim), dtype=np.float32),
            size=len(base),
            dead=np.zeros(len(base), dtype=bool),
        )
        self.replayed = self._replay(encode)
        self._log = None  # opened at the first change: a service that only reads writes nothing

    # -- changes -----------------------------------------------------------------------------
    def put(self, items: list[NewItem]) -> Snapshot:
        """Add or replace items (vectors computed): logged, then visible, all at once."""
        record = {
            "op": "put",
            "items": [
                {
                    "id": i.id,
                    "language": i.language,
                    "category": i.category,
                    "text": i.text,
                    "encoder": self.encoder,
                    "vector": base64.b64encode(i.vector.astype("<f4").tobytes()).decode("ascii"),
                }
                for i in items
            ],
        }
        with self._lock:
            self._append(record)
            self.snapshot = self._with_put(self.snapshot, items)
            return self.snapshot

    def delete(self, keys: list[str]) -> tuple[Snapshot, list[str]]:
        """Remove these items, unless some are not in the catalog: then nothing changes.
        Returns the snapshot now and the ids not found."""
        with self._lock:
            snap = self.snapshot
            missing = [k for k in keys if snap.row(k) is None]
            if not missing:  # all or nothing, as a put
                self._append({"op": "delete", "ids": keys})
                self.snapshot = self._with_delete(snap, keys)
            return self.snapshot, missing

    def _append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - held for the service's life
        self._log.write(line)
        self._log.flush()
        os.fsync(self._log.fileno())  # durable before anyone is told it happened

    @staticmethod
    def _with_put(snap: Snapshot, items: list[NewItem]) -> Snapshot:
        changed = dict(snap.changed)
        dead = np.concatenate([snap.dead, np.zeros(len(items), dtype=bool)])
        categories = dict(snap.categories)
        row = snap.size
        for item in items:
            old = changed.get(item.id, snap.base.row_of.get(item.id))
            if old is not None:
                dead[old] = True
            changed[item.id] = row
            if item.category:
                categories[row] = item.category
            row += 1
        # rows beyond this snapshot's size are invisible to earlier ones: appending is safe
        snap.delta_ids.extend(i.id for i in items)
        return replace(
            snap,
            delta_languages=np.concatenate(
                [snap.delta_languages, np.asarray([i.language for i in items], dtype="<U16")]
            ),
            delta_vectors=np.concatenate(
                [snap.delta_vectors, np.stack([i.vector for i in items]).astype(np.float32)]
            ),
            size=row,
            dead=dead,
            changed=changed,
            categories=categories,
        )

    @staticmethod
    def _with_delete(snap: Snapshot, keys: list[str]) -> Snapshot:
        changed = dict(snap.changed)
        dead = snap.dead.copy()
        for key in keys:
            row = changed.get(key, snap.base.row_of.get(key))
            if row is not None:
                dead[row] = True
            changed[key] = None
        return replace(snap, dead=dead, changed=changed)

    # -- replay ------------------------------------------------------------------------------
    def _replay(self, encode: Callable[[list[str]], np.ndarray]) -> int:
        """Apply the update log; returns the number of requests replayed."""
        if not self.log_path.is_file():
            return 0
        data = self.log_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning(
                "%s: dropped a torn last line (%d bytes, no newline: a write cut short by a "
                "crash, never acknowledged)",
                self.log_path, len(data) - end,
            )  # fmt: skip
            with open(self.log_path, "r+b") as handle:
                handle.truncate(end)
                os.fsync(handle.fileno())
        snap, reencoded = self.snapshot, 0
        for number, line in enumerate(data[:end].splitlines(), start=1):
            where = f"{self.log_path}:{number}"
            try:
                record = json.loads(line)
                if record["op"] == "put":
                    items = [self._item(i, where) for i in record["items"]]
                    stale = [n for n, i in enumerate(items) if i.vector is None]
                    if stale:
                        vectors = encode([items[n].text for n in stale])
                        for n, vector in zip(stale, vectors, strict=True):
                            items[n] = replace(items[n], vector=vector)
                        reencoded += len(stale)
                    snap = self._with_put(snap, items)
                elif record["op"] == "delete":
                    snap = self._with_delete(snap, [str(k) for k in record["ids"]])
                else:
                    raise DataError(f"{where}: unknown op {record['op']!r}")
            except (ValueError, KeyError, TypeError) as err:
                if isinstance(err, DataError):
                    raise
                raise DataError(
                    f"{where}: unreadable update ({type(err).__name__}: {err}); the log is "
                    "damaged: restore it, or move it away to serve the export without its updates"
                ) from None
        self.snapshot = snap
        lines = data[:end].count(b"\n")
        if lines:
            log.info(
                "replayed %d catalog updates from %s (%d texts encoded again: logged with "
                "another encoder); %d items now",
                lines, self.log_path, reencoded, snap.live_items,
            )  # fmt: skip
        return lines

    def _item(self, raw: dict, where: str) -> NewItem:
        vector = None
        if raw["encoder"] == self.encoder:
            vector = np.frombuffer(base64.b64decode(raw["vector"]), dtype="<f4")
            if vector.shape != (self.snapshot.base.vectors.shape[1],):
                raise DataError(f"{where}: a vector of {vector.shape} for {raw['id']}")
        return NewItem(
            id=str(raw["id"]),
            language=str(raw["language"]),
            text=str(raw["text"]),
            category=str(raw.get("category", "")),
            vector=vector,
        )
