"""Behaviors rows -> the JSON samples of the impression shards.

A sample is {"impression", "user", "lang", "history", "candidates", "labels"} with item refs
replaced by rows of the item table, serialised compactly (json.dumps with separators ",", ":").

The reference path (mind.parse_behavior, a lookup per ref, json.dumps) builds an Impression,
tuples, Counters and a dict per row. `SampleEncoder.encode` handles the usual row with str methods
and one dict that maps a ref *as written* ("N12@de", or "N12" in the default language) to its
row's decimal text, so a sample is joined from strings, in about 2.5x less time (what is left is
mostly the ~30 dict lookups a row needs, each a cache miss in a table of 10^5-10^6 items). Any
row it does not take apart cleanly (wrong columns, bad label or id, unknown ref, undecodable
bytes) goes down the reference path, so every error, with its text and its precedence, is the
reference reader's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii  # what json.dumps uses for str by default
from pathlib import Path
from typing import Protocol

from mlrec.data.mind import parse_behavior
from mlrec.data.rows import NO_CLICK, UNKNOWN_ITEM, DataError
from mlrec.languages import ItemKey

_LABELLED = frozenset(("-0", "-1"))


class KeyRows(Protocol):
    def __getitem__(self, key: ItemKey, /) -> int: ...


def reference_rows(row_of: KeyRows, refs: list[ItemKey], where: str) -> list[int]:
    try:
        return [row_of[ref] for ref in refs]
    except KeyError as err:
        nid, lang = err.args[0]
        raise DataError(
            f"{where} refers to {nid}@{lang}, which no news file of that language holds",
            UNKNOWN_ITEM,
        ) from None


def reference_sample(
    raw: bytes, path: Path, number: int, row_of: KeyRows, default_language: str
) -> tuple[str, int, bytes]:
    """(language, impression id, JSON) of one behaviors row; raises DataError for a bad row."""
    imp = parse_behavior(raw, path, number, default_language)
    where = f"{path}:{number}"
    if 1 not in imp.labels:
        # nothing to learn from in training, and no AUC in evaluation: never a silent drop
        raise DataError(
            f"{where}: impression {imp.impression_id} has no clicked candidate (every one ends "
            "in -0)",
            NO_CLICK,
        )
    sample = {
        "impression": imp.impression_id,
        "user": imp.user,
        "lang": imp.lang,
        "history": reference_rows(row_of, imp.history, f"{where}: history"),
        "candidates": reference_rows(row_of, imp.candidates, f"{where}: impressions"),
        "labels": imp.labels,
    }
    return imp.lang, imp.impression_id, json.dumps(sample, separators=(",", ":")).encode()


class _KeyRows:
    """(news id, language) -> row, answered from the map of refs as written, so that only that
    map stays in memory; news ids hold no "@", so "nid@lang" names the key."""

    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows

    def __getitem__(self, key: ItemKey) -> int:
        try:
            return int(self.rows[f"{key[0]}@{key[1]}"])
        except KeyError:
            raise KeyError(key) from None


class SampleEncoder:
    """Encode behaviors rows against one item table (see the module docstring)."""

    def __init__(self, keys: Iterable[tuple[ItemKey, int]], default_language: str) -> None:
        """`keys`: ((news id, language), row) of the table's rows; a repeated key's last row
        wins, as in a dict built from them."""
        self.default_language = default_language
        self.rows: dict[str, str] = {}
        for (nid, lang), row in keys:
            refs = [f"{nid}@{lang}", nid] if lang == default_language else [f"{nid}@{lang}"]
            for ref in refs:
                self.rows[ref] = str(row)
        self.by_key = _KeyRows(self.rows)

    def encode(self, raw: bytes, path: Path, number: int) -> tuple[str, int, bytes]:
        """(language, impression id, JSON) of one behaviors row; raises DataError for a bad row."""
        try:
            imp_id, user, _, history, impressions = raw.decode().split("\t")
            if not (imp_id.isascii() and imp_id.isdigit()):
                raise ValueError  # "+5", "1_000", other scripts' digits: the reference parser
            impression = int(imp_id)
            shown = impressions.split()
            # "-0"/"-1" endings are exactly what parse_behavior's rpartition("-") accepts
            labels = {token[-2:] for token in shown}
            if not shown or not labels <= _LABELLED or "-1" not in labels:
                raise ValueError
            refs = [token[:-2] for token in shown]
            row = self.rows.__getitem__
            candidates = ",".join(map(row, refs))
            seen = ",".join(map(row, history.split()))
        except (ValueError, KeyError):  # UnicodeDecodeError is a ValueError
            return reference_sample(raw, path, number, self.by_key, self.default_language)
        # Each ref was found, so its language is its text after the "@" (news ids hold none,
        # mind.parse_news rejects them); string work is cheaper than a second lookup.
        default = self.default_language
        shown_in = [ref.partition("@")[2] if "@" in ref else default for ref in refs]
        lang = shown_in[0]
        if 2 * shown_in.count(lang) <= len(shown_in):  # no majority: Impression.lang's rule
            lang = Counter(shown_in).most_common(1)[0][0]
        payload = (
            f'{{"impression":{impression},"user":{encode_basestring_ascii(user)},'
            f'"lang":{encode_basestring_ascii(lang)},"history":[{seen}],"candidates":[{candidates}],'
            f'"labels":[{",".join([token[-1] for token in shown])}]}}'
        )
        return lang, impression, payload.encode()
