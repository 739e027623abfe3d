"""Readers for the MIND format (news.tsv + behaviors.tsv), with xMIND's per-language news files.

MIND's news.tsv has 8 tab-separated columns (nid, category, subcategory, title, abstract, url,
title_entities, abstract_entities); behaviors.tsv has 5 (impression id, user id, time, history,
impressions). xMIND translates the news text into other languages and keeps MIND's news ids, so
one news id names an item in every language. xMIND's own files have 3 columns (nid, title,
abstract): their category and subcategory come from MIND's news by nid (see items.py).

mlrec extension: an item reference in behaviors.tsv may be written `N123@ru` to say which
language's translation the user saw; a plain `N123` (as in MIND itself) means the dataset's
default language. That lets one behaviors file hold bilingual histories and impressions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from mlrec.data.rows import (
    BAD_ID,
    BAD_LABEL,
    BAD_NEWS_ID,
    COLUMNS,
    EMPTY_ID,
    EMPTY_TITLE,
    ENCODING,
    NO_IMPRESSIONS,
    DataError,
    RowLog,
)
from mlrec.languages import ItemKey, parse_ref

NEWS_COLUMNS = 8
XMIND_NEWS_COLUMNS = 3
BEHAVIORS_COLUMNS = 5

__all__ = ["Impression", "NewsItem", "read_behaviors", "read_news"]


@dataclass(frozen=True)
class NewsItem:
    nid: str
    lang: str
    category: str
    subcategory: str
    title: str
    abstract: str

    def text(self, fields: list[str]) -> str:
        return " ".join(getattr(self, f) for f in fields if getattr(self, f))

    def with_category(self, category: str, subcategory: str) -> NewsItem:
        return replace(self, category=category, subcategory=subcategory)


@dataclass(frozen=True)
class Impression:
    impression_id: int
    user: str
    time: str
    history: list[ItemKey]
    candidates: list[ItemKey]
    labels: list[int]

    @property
    def lang(self) -> str:
        """The language most of the candidates are shown in (first seen wins a tie)."""
        return Counter(lang for _, lang in self.candidates).most_common(1)[0][0]


UTF8_BOM = b"\xef\xbb\xbf"


def line_bytes(number: int, raw: bytes) -> bytes:
    """A line without its line end, and line 1 without a UTF-8 byte-order mark (editors on
    Windows write one; kept, it glues onto the first news or impression id, which then matches
    nothing and the error blames another file)."""
    raw = raw.rstrip(b"\r\n")
    return raw.removeprefix(UTF8_BOM) if number == 1 else raw


def raw_rows(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line end) of every non-blank line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = line_bytes(number, raw)
            if raw:
                yield number, raw


def decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}:{number}: text is not valid UTF-8 ({err.reason})", ENCODING
        ) from err


def parse_news(raw: bytes, path: Path, number: int, lang: str) -> NewsItem:
    """One MIND (8 columns) or xMIND (3 columns: nid, title, abstract) news row."""
    cols = decode(raw, path, number).split("\t")
    if len(cols) == NEWS_COLUMNS:
        nid, category, subcategory, title, abstract = map(str.strip, cols[:5])
    elif len(cols) == XMIND_NEWS_COLUMNS:
        nid, title, abstract = map(str.strip, cols)
        category = subcategory = ""  # joined from MIND's news by nid
    else:
        raise DataError(
            f"{path}:{number}: expected {NEWS_COLUMNS} tab-separated columns (MIND) or "
            f"{XMIND_NEWS_COLUMNS} (xMIND), got {len(cols)}",
            COLUMNS,
        )
    if not nid:
        raise DataError(f"{path}:{number}: empty news id", EMPTY_ID)
    if "@" in nid:
        raise DataError(
            f"{path}:{number}: news id {nid!r} contains '@', which item references use to name "
            "a language (N123@de)",
            BAD_NEWS_ID,
        )
    if not title:
        raise DataError(f"{path}:{number}: empty title for {nid}", EMPTY_TITLE)
    return NewsItem(nid, lang, category, subcategory, title, abstract)


def read_news(path: str | Path, lang: str, rows: RowLog | None = None) -> Iterator[NewsItem]:
    """Yield the items of one MIND/xMIND news.tsv, all in language `lang`."""
    path, rows = Path(path), rows or RowLog()
    for number, raw in raw_rows(path):
        rows.count(path, "rows")
        try:
            yield parse_news(raw, path, number, lang)
        except DataError as err:
            rows.reject(path, err)


def parse_behavior(raw: bytes, path: Path, number: int, default_language: str) -> Impression:
    cols = decode(raw, path, number).split("\t")
    if len(cols) != BEHAVIORS_COLUMNS:
        raise DataError(
            f"{path}:{number}: expected {BEHAVIORS_COLUMNS} tab-separated columns, got {len(cols)}",
            COLUMNS,
        )
    imp_id, user, time, history, impressions = cols
    # ASCII digits only, as the repeated-id pre-pass (mlrec.data.shards) reads them: int() also
    # takes "+5", "1_000" and other scripts' digits, which could name one impression twice
    digits = imp_id.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise DataError(
            f"{path}:{number}: impression id {imp_id!r} is not a non-negative integer", BAD_ID
        )
    impression_id = int(digits)
    candidates, labels = [], []
    for token in impressions.split():
        ref, dash, label = token.rpartition("-")
        if not dash or label not in ("0", "1"):
            raise DataError(
                f"{path}:{number}: impression {token!r} must end in -1 (clicked) or -0", BAD_LABEL
            )
        candidates.append(parse_ref(ref, default_language))
        labels.append(int(label))
    if not candidates:
        raise DataError(f"{path}:{number}: no impressions", NO_IMPRESSIONS)
    history_refs = [parse_ref(t, default_language) for t in history.split()]
    return Impression(impression_id, user, time, history_refs, candidates, labels)


def read_behaviors(
    path: str | Path, default_language: str, rows: RowLog | None = None
) -> Iterator[tuple[int, Impression]]:
    """Yield (line number, impression) for each row of a MIND behaviors.tsv."""
    path, rows = Path(path), rows or RowLog()
    for number, raw in raw_rows(path):
        rows.count(path, "rows")
        try:
            yield number, parse_behavior(raw, path, number, default_language)
        except DataError as err:
            rows.reject(path, err)
