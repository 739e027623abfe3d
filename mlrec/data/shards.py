"""Writing the corpus as pre-tokenised shards: one item table plus webdataset impression shards.

Layout of a shards folder:
  tokenizer/            the tokenizer the items were encoded with (Hugging Face format)
  items/tokens.npy      int32 [items, max_item_tokens], padded with the tokenizer's pad id
  items/index.tsv       one line per item row: nid@lang, language, category, subcategory
  train-000000.tar ...  webdataset shards; each sample is one impression whose history and
  dev-000000.tar ...    candidates are row numbers of the item table
  manifest.json         counts per split and language, tokenizer identity, sources, checksums

Why an item table: a news item appears in thousands of histories and impressions; tokenising it
once and referencing it by row keeps the shards small and means training never tokenises text.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from mlrec.config import Config
from mlrec.data.corpus import behaviors_file, news_files, prepare_corpus
from mlrec.data.mind import DataError, ItemKey, NewsItem, read_behaviors, read_news
from mlrec.models.tokenizer import load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ITEM_TOKENS = "items/tokens.npy"
ITEM_INDEX = "items/index.tsv"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "dev")
_TOKENIZE_BATCH = 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_items(cfg: Config) -> list[NewsItem]:
    """Every (news id, language) item of the corpus, in a stable order (first file wins)."""
    seen: set[ItemKey] = set()
    items: list[NewsItem] = []
    for lang, paths in sorted(news_files(cfg).items()):
        for path in paths:
            for item in read_news(path, lang):
                if (item.nid, lang) not in seen:
                    seen.add((item.nid, lang))
                    items.append(item)
    return items


def _tokenizer_for(cfg: Config, items: list[NewsItem], out: Path) -> tuple[Any, dict[str, str]]:
    source = cfg.model.tokenizer or cfg.model.name_or_path
    if source:
        tok = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code)
        tok.save_pretrained(str(out / TOKENIZER_DIR))
        return tok, {"source": source}
    texts = (item.text(cfg.data.text_fields) for item in items)
    tok = train_tokenizer(texts, cfg.model.vocab_size, out / TOKENIZER_DIR)
    return tok, {"source": "trained on this corpus", "vocab_size": str(len(tok))}


def _tokenize_items(tok: Any, items: list[NewsItem], cfg: Config, progress: bool) -> np.ndarray:
    max_len = cfg.data.max_item_tokens
    table = np.full((len(items), max_len), tok.pad_token_id, dtype=np.int32)
    starts = range(0, len(items), _TOKENIZE_BATCH)
    for start in tqdm(starts, desc="tokenising items", disable=not progress, unit="batch"):
        chunk = items[start : start + _TOKENIZE_BATCH]
        encoded = tok(
            [item.text(cfg.data.text_fields) for item in chunk],
            truncation=True,
            max_length=max_len,
        )["input_ids"]
        for offset, ids in enumerate(encoded):
            table[start + offset, : len(ids)] = ids
    return table


def _rows(row_of: dict[ItemKey, int], refs: list[ItemKey], where: str) -> list[int]:
    try:
        return [row_of[ref] for ref in refs]
    except KeyError as err:
        nid, lang = err.args[0]
        raise DataError(
            f"{where} refers to {nid}@{lang}, which no news file of that language holds"
        ) from None


def _write_split(
    cfg: Config, split: str, row_of: dict[ItemKey, int], out: Path, progress: bool
) -> dict[str, Any]:
    path = behaviors_file(cfg, split)
    pattern = str(out / f"{split}-%06d.tar")
    per_language: Counter[str] = Counter()
    rows = 0
    with wds.ShardWriter(pattern, maxcount=cfg.data.shard_max_samples, verbose=0) as sink:
        for number, imp in tqdm(
            read_behaviors(path, cfg.data.default_language),
            desc=f"sharding {split}",
            disable=not progress,
            unit="imp",
        ):
            rows += 1
            sample = {
                "impression": imp.impression_id,
                "user": imp.user,
                "lang": imp.lang,
                "history": _rows(row_of, imp.history, f"{path}:{number}: history"),
                "candidates": _rows(row_of, imp.candidates, f"{path}:{number}: impressions"),
                "labels": imp.labels,
            }
            sink.write({"__key__": f"{split}-{imp.impression_id}", "json": sample})
            per_language[imp.lang] += 1
    shards = sorted(out.glob(f"{split}-*.tar"))
    return {
        "impressions": rows,
        "per_language": dict(sorted(per_language.items())),
        "shards": [
            {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256(p)} for p in shards
        ],
        "source": {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path)},
    }


def build_shards(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Tokenise the corpus once and write the shards folder; returns the manifest."""
    prepare_corpus(cfg)
    out = cfg.shards_dir
    (out / "items").mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()  # a smaller re-run must not leave shards of the last one behind
    items = read_items(cfg)
    tok, tok_info = _tokenizer_for(cfg, items, out)
    table = _tokenize_items(tok, items, cfg, progress)
    np.save(out / ITEM_TOKENS, table)
    with open(out / ITEM_INDEX, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(
                f"{item.nid}@{item.lang}\t{item.lang}\t{item.category}\t{item.subcategory}\n"
            )
    row_of = {(item.nid, item.lang): row for row, item in enumerate(items)}
    manifest: dict[str, Any] = {
        "format": 1,
        "tokenizer": {
            **tok_info,
            "path": TOKENIZER_DIR,
            "sha256": sha256(out / TOKENIZER_DIR / "tokenizer.json"),
            "pad_token_id": tok.pad_token_id,
        },
        "items": {
            "count": len(items),
            "max_tokens": cfg.data.max_item_tokens,
            "text_fields": cfg.data.text_fields,
            "per_language": dict(sorted(Counter(i.lang for i in items).items())),
            "news_files": {
                lang: [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)} for p in ps]
                for lang, ps in sorted(news_files(cfg).items())
            },
        },
        "splits": {split: _write_split(cfg, split, row_of, out, progress) for split in SPLITS},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    log.info(
        "wrote %d items and %s impressions to %s",
        len(items),
        {s: manifest["splits"][s]["impressions"] for s in SPLITS},
        out,
    )
    return manifest


def load_manifest(shards_dir: str | Path) -> dict[str, Any]:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: write the shards first with `mlrec shard --config ...`"
        )
    return json.loads(path.read_text())


def item_index(shards_dir: str | Path) -> list[tuple[str, str, str, str]]:
    """Rows of items/index.tsv: (key, language, category, subcategory)."""
    with open(Path(shards_dir) / ITEM_INDEX, encoding="utf-8") as handle:
        return [tuple(line.rstrip("\n").split("\t")) for line in handle]  # type: ignore[misc]
