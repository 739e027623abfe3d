"""Parallel text: a TSV of (source, target, source language, target language), and gettext .mo
catalogs (msgid in the source language, msgstr its translation), e.g. `vlc-l10n`'s 100+ locales.

The .mo format (GNU gettext manual, "The Format of GNU MO Files"): a magic number whose byte
order gives the file's endianness, a revision, the number of strings N, and the offsets of two
tables of N (length, offset) pairs: the original strings and their translations. Python's
`gettext` module rejects catalogs with some plural headers, hence this direct reader.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlrec.data.mind import decode, raw_rows
from mlrec.data.rows import COLUMNS, DataError, RowLog

_MO_MAGIC = 0x950412DE


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    src_lang: str
    tgt_lang: str


def read_parallel_tsv(path: str | Path, rows: RowLog | None = None) -> Iterator[Pair]:
    """Rows of source<TAB>target<TAB>src_lang<TAB>tgt_lang; bad rows follow `rows`' policy."""
    path, rows = Path(path), rows or RowLog()
    for number, raw in raw_rows(path):
        rows.count(path, "rows")
        try:
            cols = decode(raw, path, number).split("\t")
            if len(cols) != 4 or not all(c.strip() for c in cols):
                raise DataError(
                    f"{path}:{number}: expected 4 non-empty tab-separated columns (source, "
                    f"target, source language, target language), got {len(cols)}",
                    COLUMNS,
                )
        except DataError as err:
            rows.reject(path, err)
            continue
        rows.count(path, "kept")
        yield Pair(*(c.strip() for c in cols))


def read_mo(path: str | Path) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) of a .mo catalog, skipping the header entry and untranslated strings.
    Plural entries give their first forms."""
    path = Path(path)
    data = path.read_bytes()
    for order in ("<", ">"):
        if len(data) >= 20 and struct.unpack(f"{order}I", data[:4])[0] == _MO_MAGIC:
            break
    else:
        raise DataError(f"{path}: not a gettext .mo file (bad magic number)")
    _, count, originals, translations = struct.unpack(f"{order}4I", data[4:20])

    def string(table: int, i: int) -> str:
        length, offset = struct.unpack(f"{order}2I", data[table + 8 * i : table + 8 * i + 8])
        return data[offset : offset + length].split(b"\0")[0].decode("utf-8", "replace")

    for i in range(count):
        msgid, msgstr = string(originals, i), string(translations, i)
        if msgid and msgstr:
            yield msgid, msgstr


def mo_pairs(path: str | Path, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    for source, target in read_mo(path):
        yield Pair(source, target, src_lang, tgt_lang)
