"""What a user without history gets: the catalog's most clicked items, per language.

`mlrec export` (export.popularity) writes catalog/popularity.json: every catalog item clicked in
the run's training impressions with its click count. The count is the popularity baseline's
(mlrec.evaluation.baselines.Popularity): clicks per news id, so N123@de and N123@en share it and
a language filter ranks that language's versions of the most read stories. Items never clicked
are absent; a language with no clicked item falls back to serve.cold_items. Without a language
filter each story comes once, in its first catalog version: three translations of one story are
one recommendation, not three.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mlrec import io
from mlrec.export.hf import CATALOG_DIR
from mlrec.serve.catalog import Catalog

log = logging.getLogger(__name__)

POPULARITY_FILE = "popularity.json"
FORMAT = 1


def write_popularity(export_dir: str | Path, shards_dir: Path, default_language: str) -> Path:
    """Count the training clicks of every catalog item and write them into the export."""
    from mlrec.evaluation.baselines import Popularity

    popularity = Popularity.from_shards(shards_dir)
    catalog = Catalog(export_dir, default_language)
    if len(popularity.row_news) != len(catalog):
        raise ValueError(
            f"the shards' item table has {len(popularity.row_news)} rows and the export's "
            f"catalog {len(catalog)}: export from the shards the run was trained on"
        )
    clicks = {
        key: popularity.clicks[news]
        for key, news in zip(catalog.ids, popularity.row_news, strict=True)
        if news in popularity.clicks
    }
    path = Path(export_dir) / CATALOG_DIR / POPULARITY_FILE
    record = {"format": FORMAT, "impressions": popularity.impressions, "clicks": clicks}
    io.write_text(path, json.dumps(record, ensure_ascii=True, indent=1) + "\n")
    log.info("popularity of %d clicked catalog items for cold users: %s", len(clicks), path)
    return path


class Popular:
    """Catalog rows by training clicks, most clicked first (ties: catalog order)."""

    def __init__(self, rows: np.ndarray, clicks: np.ndarray, catalog: Catalog) -> None:
        order = np.lexsort((rows, -clicks))
        self.rows, self.clicks = rows[order], clicks[order]
        self.languages = catalog.languages[self.rows]
        news = [catalog.ids[r].rpartition("@")[0] for r in self.rows]
        self.first_version = np.zeros(len(self.rows), dtype=bool)
        self.first_version[np.unique(news, return_index=True)[1]] = True

    @classmethod
    def load(cls, export_dir: str | Path, catalog: Catalog) -> Popular | None:
        path = Path(export_dir) / CATALOG_DIR / POPULARITY_FILE
        if not path.is_file():
            log.info("no %s: users without history get serve.cold_items", path)
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            raise ValueError(f"{path}: format {record.get('format')!r}, not {FORMAT}")
        known = {k: n for k, n in record["clicks"].items() if k in catalog.row_of}
        if len(known) < len(record["clicks"]):
            log.warning(
                "%s: %d of its %d items are not in the catalog; left out",
                path, len(record["clicks"]) - len(known), len(record["clicks"]),
            )  # fmt: skip
        rows = np.asarray([catalog.row_of[k] for k in known], dtype=np.int64)
        clicks = np.asarray(list(known.values()), dtype=np.int64)
        return cls(rows, clicks, catalog)

    def top(self, k: int, languages: list[str] | None, dead: np.ndarray) -> tuple[list, list]:
        """The k most clicked live rows in these languages (None: all, each story once), with
        their clicks."""
        keep = ~dead[self.rows]
        if languages is not None:
            keep &= np.isin(self.languages, languages)
        else:
            keep &= self.first_version
        picked = np.flatnonzero(keep)[:k]
        return self.rows[picked].tolist(), self.clicks[picked].tolist()
