"""The item table: every (news id, language) tokenised once, in a stable order (tokenizer/ and
items/ of a shards folder, see mlrec.data.layout).

The news files are streamed several times (counting, tokenizer training, encoding, and a pass for
categories once a row lacks its own) instead of being held in memory: xMIND has ~1.8M (item,
language) rows, and the table itself is written through a memory map, so memory grows with the
number of items' ids, not their text.
xMIND rows (nid, title, abstract) take category and subcategory from a MIND row with the same
news id; a row whose id no MIND file knows is rejected as an unknown news id.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlrec import io
from mlrec.config import DataConfig
from mlrec.data.corpus import news_files
from mlrec.data.layout import ITEM_INDEX, ITEM_TOKENS, ITEMS_DIR, ITEMS_RECORD, TOKENIZER_DIR
from mlrec.data.mind import NewsItem, read_news
from mlrec.data.rows import UNKNOWN_ITEM, DataError, RowLog
from mlrec.data.tokenizer import TokenizerSpec, load_tokenizer, train_tokenizer
from mlrec.io import file_record, sha256
from mlrec.languages import ItemKey

log = logging.getLogger(__name__)

_TOKENIZE_BATCH = 1024


def _categories(files: dict[str, list[Path]]) -> dict[str, tuple[str, str]]:
    """News id -> (category, subcategory) from the MIND-format rows (first file wins)."""
    found: dict[str, tuple[str, str]] = {}
    quiet = RowLog("skip", warn=False)  # errors are reported by the counting pass
    for _, paths in sorted(files.items()):
        for path in paths:
            for item in read_news(path, "", quiet):
                if item.category:
                    found.setdefault(item.nid, (item.category, item.subcategory))
    return found


class Categories:
    """`_categories(files)`, read on first use: an extra pass over every news file that a corpus
    whose rows all carry their category (plain MIND) never needs."""

    def __init__(self, files: dict[str, list[Path]]) -> None:
        self.files = files
        self.found: dict[str, tuple[str, str]] | None = None

    def __call__(self) -> dict[str, tuple[str, str]]:
        if self.found is None:
            self.found = _categories(self.files)
        return self.found


def kept_items(
    files: dict[str, list[Path]], lazy_categories: Categories, rows: RowLog
) -> Iterator[NewsItem]:
    """The items of the table in row order: first occurrence of each (news id, language)."""
    seen: set[ItemKey] = set()
    for lang, paths in sorted(files.items()):
        for path in paths:
            for item in read_news(path, lang, rows):
                if (item.nid, lang) in seen:
                    rows.count(path, "duplicates")
                    continue
                if not item.category:
                    categories = lazy_categories()
                    if item.nid not in categories:
                        rows.reject(
                            path,
                            DataError(
                                f"{path}: {item.nid} ({lang}) is in no MIND-format news file, so "
                                "it has no category",
                                UNKNOWN_ITEM,
                            ),
                        )
                        continue
                    item = item.with_category(*categories[item.nid])
                seen.add((item.nid, lang))
                rows.count(path, "kept")
                yield item


def fingerprint(
    data: DataConfig, tokenizer: TokenizerSpec, sources: dict[str, list[dict[str, Any]]]
) -> str:
    """What the item table depends on; a finished table with the same one is reused."""
    inputs = {
        "sources": sources,
        "text_fields": data.text_fields,
        "item_instruction": data.item_instruction,
        "max_item_tokens": data.max_item_tokens,
        "on_error": data.on_error,
        "tokenizer": tokenizer.source,
        "vocab_size": tokenizer.vocab_size,
    }
    return io.fingerprint(inputs)


def _tokenizer(spec: TokenizerSpec, texts: Iterator[str], out: Path) -> tuple[Any, dict[str, str]]:
    if spec.source:
        tok = load_tokenizer(spec.source, trust_remote_code=spec.trust_remote_code)
        tok.save_pretrained(str(out))
        return tok, {"source": spec.source}
    tok = train_tokenizer(texts, spec.vocab_size, out)
    return tok, {"source": "trained on this corpus", "vocab_size": str(len(tok))}


def _encode(tok: Any, texts: list[str], max_len: int) -> np.ndarray:
    """Token ids of `texts`, one row each, padded with the pad id to `max_len`."""
    # Only input_ids: a plain call also copies attention masks and type ids out of every Rust
    # encoding, Python-side work that the table does not use.
    ids = tok(
        texts,
        truncation=True,
        max_length=max_len,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    block = np.full((len(ids), max_len), tok.pad_token_id, dtype=np.int32)
    # a boolean mask fills row by row, left to right: each row's first `length` cells
    block[np.arange(max_len) < lengths[:, None]] = np.fromiter(
        chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())
    )
    return block


def _write_table(
    tmp: Path,
    tok: Any,
    items: Iterator[NewsItem],
    shape: tuple[int, int],
    fields: list[str],
    progress: bool,
    instruction: str = "",
) -> None:
    """items/tokens.npy (`shape`: rows, tokens) and items/index.tsv under `tmp`, in `items`'
    order; the table is written through a memory map, a batch of rows at a time."""
    count, max_len = shape
    table = np.lib.format.open_memmap(tmp / ITEM_TOKENS, mode="w+", dtype=np.int32, shape=shape)
    bar = tqdm(total=count, desc="tokenising items", disable=not progress, unit="item")
    with open(tmp / ITEM_INDEX, "w", encoding="utf-8") as index:
        row, batch = 0, []
        for item in chain(items, [None]):  # None flushes the last batch
            if item is not None:
                batch.append(item)
                index.write(
                    f"{item.nid}@{item.lang}\t{item.lang}\t{item.category}\t{item.subcategory}\n"
                )
            if len(batch) == _TOKENIZE_BATCH or (item is None and batch):
                table[row : row + len(batch)] = _encode(
                    tok, [instruction + i.text(fields) for i in batch], max_len
                )
                row += len(batch)
                bar.update(len(batch))
                batch = []
    bar.close()
    table.flush()
    del table


def build_items(
    data: DataConfig,
    corpus_dir: Path,
    tokenizer: TokenizerSpec,
    out: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Write tokenizer/ and items/ under `out` (or reuse them) for the news files of the corpus
    folder `corpus_dir`; returns items/items.json."""
    files = news_files(data, corpus_dir)
    sources = {lang: [file_record(p) for p in ps] for lang, ps in sorted(files.items())}
    key = fingerprint(data, tokenizer, sources)
    record_path = out / ITEMS_RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["fingerprint"] == key:
            log.info("item table up to date: %s", out / ITEMS_DIR)
            return record
    # Build beside the final folders and rename them in place when complete, so an interrupted
    # run never leaves a table that looks finished (items.json is the completion mark).
    tmp = out / ".items-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ITEMS_DIR).mkdir(parents=True)
    categories = Categories(files)
    rows = RowLog(data.on_error)
    per_language = Counter(item.lang for item in kept_items(files, categories, rows))
    count = sum(per_language.values())
    if not count:
        raise DataError(f"no usable news rows in {', '.join(str(p) for p in sorted(files))}")

    def quiet_items() -> Iterator[NewsItem]:
        return kept_items(files, categories, RowLog("skip", warn=False))

    fields = data.text_fields
    texts = (i.text(fields) for i in quiet_items())
    tok, tok_info = _tokenizer(tokenizer, texts, tmp / TOKENIZER_DIR)
    max_len = data.max_item_tokens
    _write_table(tmp, tok, quiet_items(), (count, max_len), fields, progress, data.item_instruction)
    record = {
        "fingerprint": key,
        "count": count,
        "max_tokens": max_len,
        "text_fields": fields,
        "per_language": dict(sorted(per_language.items())),
        "news_files": sources,
        "rows": rows.summary(),
        "tokenizer": {
            **tok_info,
            "path": TOKENIZER_DIR,
            "sha256": sha256(tmp / TOKENIZER_DIR / "tokenizer.json"),
            "pad_token_id": tok.pad_token_id,
        },
    }
    (tmp / ITEMS_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False))
    for name in (TOKENIZER_DIR, ITEMS_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
        io.publish(tmp / name, out / name)
    tmp.rmdir()
    return record
