"""The layout of a shards folder: where each file lives and how readers find them.

  tokenizer/            the tokenizer the items were encoded with (Hugging Face format)
  items/tokens.npy      int32 [items, data.max_item_tokens], padded with the tokenizer's pad id
  items/index.tsv       one line per row: nid@lang, language, category, subcategory
  items/items.json      counts, source files, row accounting, and the fingerprint of the inputs
  items/features.npy    float16 [items, dim]: a frozen teacher's vector per row (data.item_features)
  items/features.json   the teacher and options they were made with (mlrec.data.features)
  train-000003-de.tar   the German impressions among rows 3N..4N-1 of train behaviors.tsv
  train-000003.json     that unit's record: row accounting, its tars with counts and checksums
  dev-000000-de.tar     the dev set's impressions (one dev set), or with several named sets
  dev_fr-000000-fr.tar  ... those of the set named "fr" (data.dev_sets, or xMIND's dev/fr/)
  manifest.json         counts per split and language, tokenizer, sources, checksums, row counts

Writers (items.py, shards.py) and readers (loader, evaluation, export, serve) all take names
from here, so the layout has one owner.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlrec.languages import ItemKey, parse_ref

TOKENIZER_DIR = "tokenizer"
ITEMS_DIR = "items"
TOKENIZER_FILE = "tokenizer/tokenizer.json"  # what the manifest's tokenizer sha256 is of
ITEM_TOKENS = "items/tokens.npy"
ITEM_INDEX = "items/index.tsv"
ITEMS_RECORD = "items/items.json"
ITEM_FEATURES = "items/features.npy"
FEATURES_RECORD = "items/features.json"
FEATURES_TRANSFORM = "items/features-transform.npz"  # per-language means and maps
MANIFEST = "manifest.json"
# in a local mirror of a remote shards folder (mlrec.data.remote): {"url": the folder's URL}
REMOTE_RECORD = "remote.json"


def load_manifest(shards_dir: str | Path) -> dict[str, Any]:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: write the shards first with `mlrec shard --config ...`"
        )
    return json.loads(path.read_text())


def dev_splits(shards_dir: str | Path) -> list[str]:
    """The dev sets' split names: ["dev"] for the one dev set, or "dev_<name>" per named set."""
    splits = load_manifest(shards_dir)["splits"]
    return sorted(s for s in splits if s == "dev" or s.startswith("dev_"))


def dev_set_name(split: str) -> str:
    """The name a user gave a dev set: "dev" -> "dev"; "dev_de" -> "de"."""
    return split.removeprefix("dev_")


@dataclass(frozen=True)
class ShardFile:
    """One tar of a split and what manifest.json records of it: readers check the file against
    these (mlrec.data.verify). A path-like, so it opens wherever a path does."""

    path: Path
    language: str
    samples: int
    bytes: int
    sha256: str
    url: str = ""  # where the tar is read from when the folder is a remote one's mirror

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def unit_record(self) -> Path:
        """Its unit's record (train-000003-de.tar -> train-000003.json): without it, `mlrec
        shard` writes that unit again instead of skipping it as finished."""
        unit = self.path.name.removesuffix(f"-{self.language}.tar")
        return self.path.with_name(f"{unit}.json")


def remote_url(shards_dir: str | Path) -> str:
    """The URL of the remote folder that `shards_dir` mirrors, or "" for a local folder."""
    record = Path(shards_dir) / REMOTE_RECORD
    return json.loads(record.read_text())["url"] if record.is_file() else ""


def shard_files(shards_dir: str | Path, split: str) -> list[ShardFile]:
    """The tars of a split, in the manifest's order."""
    base = remote_url(shards_dir)
    return [
        ShardFile(
            Path(shards_dir) / s["name"],
            s["language"],
            s["samples"],
            s["bytes"],
            s["sha256"],
            f"{base}/{s['name']}" if base else "",
        )
        for s in load_manifest(shards_dir)["splits"][split]["shards"]
    ]


def language_shards(shards_dir: str | Path, split: str) -> dict[str, list[ShardFile]]:
    """Language -> its tars, in name order."""
    shards: dict[str, list[ShardFile]] = {}
    for shard in shard_files(shards_dir, split):
        shards.setdefault(shard.language, []).append(shard)
    return dict(sorted(shards.items()))


def item_index(shards_dir: str | Path) -> list[tuple[str, str, str, str]]:
    """Rows of items/index.tsv: (key, language, category, subcategory)."""
    with open(Path(shards_dir) / ITEM_INDEX, encoding="utf-8") as handle:
        return [tuple(line.rstrip("\n").split("\t")) for line in handle]  # type: ignore[misc]


def item_keys(shards_dir: str | Path) -> Iterator[tuple[ItemKey, int]]:
    """((news id, language), row) for each row of the item table, from items/index.tsv."""
    with open(Path(shards_dir) / ITEM_INDEX, encoding="utf-8") as handle:
        for row, line in enumerate(handle):
            yield parse_ref(line.split("\t", 1)[0], ""), row


def item_rows(shards_dir: str | Path) -> dict[ItemKey, int]:
    """(news id, language) -> row of the item table."""
    return dict(item_keys(shards_dir))
