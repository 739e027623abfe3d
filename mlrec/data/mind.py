"""Readers for the MIND format (news.tsv + behaviors.tsv), with xMIND's per-language news files.

MIND's news.tsv has 8 tab-separated columns (nid, category, subcategory, title, abstract, url,
title_entities, abstract_entities); behaviors.tsv has 5 (impression id, user id, time, history,
impressions). xMIND translates the news text into other languages and keeps MIND's news ids, so
one news id names an item in every language.

mlrec extension: an item reference in behaviors.tsv may be written `N123@ru` to say which
language's translation the user saw; a plain `N123` (as in MIND itself) means the dataset's
default language. That lets one behaviors file hold bilingual histories and impressions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NEWS_COLUMNS = 8
BEHAVIORS_COLUMNS = 5

ItemKey = tuple[str, str]  # (news id, language)


class DataError(ValueError):
    """A corpus row that cannot be used; the message names file and line."""


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


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: text is not valid UTF-8 ({err.reason})") from err
            line = line.rstrip("\r\n")
            if line:
                yield number, line


def read_news(path: str | Path, lang: str) -> Iterator[NewsItem]:
    """Yield the items of one MIND/xMIND news.tsv, all in language `lang`."""
    path = Path(path)
    for number, line in _lines(path):
        cols = line.split("\t")
        if len(cols) != NEWS_COLUMNS:
            raise DataError(
                f"{path}:{number}: expected {NEWS_COLUMNS} tab-separated columns, got {len(cols)}"
            )
        nid, category, subcategory, title, abstract = (c.strip() for c in cols[:5])
        if not nid:
            raise DataError(f"{path}:{number}: empty news id")
        if not title:
            raise DataError(f"{path}:{number}: empty title for {nid}")
        yield NewsItem(nid, lang, category, subcategory, title, abstract)


def parse_ref(token: str, default_language: str) -> ItemKey:
    nid, sep, lang = token.partition("@")
    return (nid, lang if sep else default_language)


def read_behaviors(path: str | Path, default_language: str) -> Iterator[tuple[int, Impression]]:
    """Yield (line number, impression) for each row of a MIND behaviors.tsv."""
    path = Path(path)
    for number, line in _lines(path):
        cols = line.split("\t")
        if len(cols) != BEHAVIORS_COLUMNS:
            raise DataError(
                f"{path}:{number}: expected {BEHAVIORS_COLUMNS} tab-separated columns, "
                f"got {len(cols)}"
            )
        imp_id, user, time, history, impressions = cols
        try:
            impression_id = int(imp_id)
        except ValueError:
            raise DataError(
                f"{path}:{number}: impression id {imp_id!r} is not an integer"
            ) from None
        candidates, labels = [], []
        for token in impressions.split():
            ref, dash, label = token.rpartition("-")
            if not dash or label not in ("0", "1"):
                raise DataError(
                    f"{path}:{number}: impression {token!r} must end in -1 (clicked) or -0"
                )
            candidates.append(parse_ref(ref, default_language))
            labels.append(int(label))
        if not candidates:
            raise DataError(f"{path}:{number}: no impressions")
        yield (
            number,
            Impression(
                impression_id,
                user,
                time,
                [parse_ref(t, default_language) for t in history.split()],
                candidates,
                labels,
            ),
        )
