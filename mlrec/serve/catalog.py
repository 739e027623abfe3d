"""The item catalog the service ranks: the export's item table and its item vectors.

The vectors are embedded at start, or loaded when the export holds precomputed ones that match
(see mlrec.serve.vectors).

`catalog/tokens.npy` and `catalog/index.tsv` are the run's item table (see mlrec.data.shards),
copied into the export, so items are the same (news id, language) pairs the model was trained
and evaluated on. Ids are `N123@de`; a plain `N123` means the config's `data.default_language`,
as in behaviors.tsv.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mlrec.evaluation.encode import encode_rows
from mlrec.export.backends import Backend
from mlrec.export.hf import CATALOG_DIR
from mlrec.languages import format_ref, parse_ref

log = logging.getLogger(__name__)


class UnknownItems(KeyError):
    """Some requested ids are not in the catalog."""


class Catalog:
    def __init__(self, export_dir: str | Path, default_language: str) -> None:
        root = Path(export_dir) / CATALOG_DIR
        if not (root / "tokens.npy").is_file():
            raise FileNotFoundError(
                f"{root}/tokens.npy not found: is {export_dir} an export written by `mlrec export`?"
            )
        self.root = root
        with open(root / "index.tsv", encoding="utf-8") as handle:
            index = [line.rstrip("\n").split("\t") for line in handle]
        self.ids = [row[0] for row in index]
        self.languages = np.asarray([row[1] for row in index])
        self.categories = [row[2] if len(row) > 2 else "" for row in index]
        self.row_of = {key: row for row, key in enumerate(self.ids)}
        self.default_language = default_language
        self.vectors = np.zeros((0, 0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: list[str]) -> list[int]:
        """Catalog rows of `ids`; raises UnknownItems naming every id it does not hold."""
        keys = [format_ref(parse_ref(i, self.default_language)) for i in ids]
        unknown = [i for i, key in zip(ids, keys, strict=True) if key not in self.row_of]
        if unknown:
            raise UnknownItems(unknown)
        return [self.row_of[key] for key in keys]

    def embed(self, backend: Backend, pad_id: int, batch_size: int) -> None:
        start = time.perf_counter()
        # Read here, not at load: with precomputed vectors the token table is never needed.
        tokens = np.load(self.root / "tokens.npy", allow_pickle=False)
        self.vectors = encode_rows(backend, tokens, np.arange(len(self)), pad_id, batch_size)
        log.info("embedded %d catalog items in %.1f s", len(self), time.perf_counter() - start)
