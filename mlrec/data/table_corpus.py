"""`data.source: table`: the user's item table and interaction log, converted once into a
MIND-format corpus, so that sharding, training and evaluation read it as they read MIND.

Items (`data.table.items`, one row per item and language) -> `news/<lang>.tsv`, 8 MIND columns:
id, category (`none` when unmapped), subcategory, title, abstract. Tabs and line ends inside a
value become spaces (they would split the TSV); an empty or `@`-holding or whitespace-holding id,
an empty or bad language, an empty title is a row error; an (id, language) already read is
counted as a duplicate.

Interactions (`data.table.interactions`) -> `train/behaviors.tsv` and `dev/behaviors.tsv`, item
refs written `id@lang`, impression ids numbered 1, 2, ... per file in time order:
- a click log (no impression_id): one impression per click, the click plus
  `negatives_per_click` negatives drawn as `data.table.negatives` says (mlrec.data.negatives);
- an impression log (impression_id and label): the rows sharing an impression id are its shown
  items; an impression without a click is a row error.
History: the `history` column (a list of item ids, or `id@lang` refs), else the user's latest
`max_history` clicks before the event, across both splits. Events are ordered by time (ties in
file order, files in name order); the latest `dev_fraction` of them form the dev set (ties at
the boundary are split by that order). Streamed logs must already be in time order.

Every row goes to the row accounting (corpus.json's `rows`: rows = kept + duplicates + skipped,
per table) under `data.on_error`: strict stops at the first bad row with `table: row N:
reason`, skip counts it. The conversion is redone when the tables (size, modification time) or
the section change, and skipped otherwise.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlrec import io
from mlrec.config import DataConfig, TableColumnsConfig, TableCorpusConfig
from mlrec.data.negatives import NegativeSampler
from mlrec.data.rows import (
    AMBIGUOUS_ITEM,
    BAD_ID,
    BAD_LABEL,
    BAD_NEWS_ID,
    BAD_TIME,
    DUPLICATE_IMPRESSION,
    EMPTY_ID,
    EMPTY_LANGUAGE,
    EMPTY_TITLE,
    EMPTY_USER,
    NO_CLICK,
    NO_NEGATIVE,
    UNKNOWN_ITEM,
    DataError,
    RowLog,
)
from mlrec.data.tables import Located, Row, Table, check_columns, in_order, open_tables
from mlrec.languages import ItemKey, format_ref, parse_ref

log = logging.getLogger(__name__)

RECORD = "corpus.json"
SPLITS = ("train", "dev")
_LANGUAGE = re.compile(r"[A-Za-z0-9_-]+")  # it names files: news/<lang>.tsv, *-<lang>.tar
_CELL = str.maketrans("\t\r\n", "   ")


def cell(value: Any) -> str:
    """A value as one TSV cell: text, stripped, with tabs and line ends made spaces."""
    return "" if value is None else str(value).translate(_CELL).strip()


@dataclass
class Catalog:
    """The items read, in table order: what interactions may refer to."""

    keys: list[ItemKey] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)  # "id@lang", as behaviors rows write them
    categories: list[str] = field(default_factory=list)
    index: dict[ItemKey, int] = field(default_factory=dict)
    languages: dict[str, list[str]] = field(default_factory=dict)  # item id -> its languages

    def add(self, key: ItemKey, category: str) -> None:
        self.index[key] = len(self.keys)
        self.keys.append(key)
        self.refs.append(format_ref(key))
        self.categories.append(category)
        self.languages.setdefault(key[0], []).append(key[1])

    def row(self, item: Any, language: Any, where: str) -> int:
        return self.index[self.resolve(item, language, where)]

    def resolve(self, item: Any, language: Any, where: str) -> ItemKey:
        """The item an interaction names: by id and language column, or by an `id@lang` ref,
        or by id alone when the item exists in one language only."""
        nid = cell(item)
        if not nid:
            raise DataError(f"{where}: empty item id", EMPTY_ID)
        lang = cell(language)
        if not lang and "@" in nid:
            nid, lang = parse_ref(nid, "")
        if lang:
            if (nid, lang) not in self.index:
                raise DataError(f"{where}: item {nid}@{lang} is in no item table row", UNKNOWN_ITEM)
            return nid, lang
        langs = self.languages.get(nid)
        if not langs:
            raise DataError(f"{where}: item {nid} is in no item table row", UNKNOWN_ITEM)
        if len(langs) > 1:
            raise DataError(
                f"{where}: item {nid} is in {len(langs)} languages ({', '.join(langs[:5])}); "
                "say which one the user saw with data.table.columns.item_language",
                AMBIGUOUS_ITEM,
            )
        return nid, langs[0]


# ---------------------------------------------------------------------------- items


def _item_row(row: Row, columns: TableColumnsConfig, default_language: str, where: str):
    nid = cell(row[columns.item_id])
    if not nid:
        raise DataError(f"{where}: empty item id", EMPTY_ID)
    if "@" in nid or len(nid.split()) != 1:
        raise DataError(
            f"{where}: item id {nid!r} holds '@' or whitespace, which item references in "
            "behaviors use (N123@de, space-separated)",
            BAD_NEWS_ID,
        )
    lang = cell(row[columns.language]) if columns.language else default_language
    if not _LANGUAGE.fullmatch(lang):
        raise DataError(
            f"{where}: language {lang!r} of {nid} is empty or not letters, digits, _ and -",
            EMPTY_LANGUAGE,
        )
    title = cell(row[columns.title])
    if not title:
        raise DataError(f"{where}: empty title for {nid}", EMPTY_TITLE)

    def text(column: str) -> str:
        return cell(row[column]) if column else ""

    category = text(columns.category) or "none"
    subcategory = text(columns.subcategory) or category
    return (nid, lang), category, [nid, category, subcategory, title, text(columns.abstract)]


def write_items(
    tables: list[Table], data: DataConfig, rows: RowLog, out: Path
) -> tuple[Catalog, dict[str, int]]:
    """news/<lang>.tsv under `out` from the item tables; the catalog and items per language."""
    columns = data.table.columns
    wanted = [c for c in (columns.item_id, columns.language, columns.title) if c]
    wanted += [c for c in (columns.abstract, columns.category, columns.subcategory) if c]
    catalog, files = Catalog(), {}
    (out / "news").mkdir(parents=True)
    try:
        for table in tables:
            rows.file(table.name)
            for number, row in table.rows(sorted(set(wanted))):
                rows.count(table.name, "rows")
                try:
                    key, category, cols = _item_row(
                        row, columns, data.default_language, f"{table.name}: row {number}"
                    )
                except DataError as err:
                    rows.reject(table.name, err)
                    continue
                if key in catalog.index:
                    rows.count(table.name, "duplicates")
                    continue
                catalog.add(key, category)
                handle = files.get(key[1])
                if handle is None:
                    path = out / "news" / f"{key[1]}.tsv"
                    handle = files[key[1]] = open(path, "w", encoding="utf-8")  # noqa: SIM115
                handle.write("\t".join([*cols, "", "", ""]) + "\n")
                rows.count(table.name, "kept")
    finally:
        for handle in files.values():
            handle.close()
    if not catalog.keys:
        raise DataError(f"{data.table.items}: no usable item row")
    per_language: dict[str, int] = {}
    for _, lang in catalog.keys:
        per_language[lang] = per_language.get(lang, 0) + 1
    return catalog, dict(sorted(per_language.items()))


# ---------------------------------------------------------------------------- events


def _time(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError("no time", BAD_TIME)
    return value


def _label(value: Any, where: str) -> int:
    text = cell(value).lower()
    for label, spellings in ((1, ("1", "1.0", "true")), (0, ("0", "0.0", "false"))):
        if text in spellings:
            return label
    raise DataError(f"{where}: label {value!r} must be 1 (clicked) or 0", BAD_LABEL)


class Events:
    """The interaction log as events in time order: clicks (a click log) or impressions (rows
    grouped by impression id); each read is a fresh pass over the tables."""

    def __init__(self, tables: list[Table], columns: TableColumnsConfig) -> None:
        self.columns = columns
        self.grouped = bool(columns.impression_id)
        keys = [columns.time, columns.impression_id] if self.grouped else [columns.time]
        self.tables = [table.sorted_by(keys) for table in tables]

    def _order(self, row: Row) -> Any:
        time = _time(row[self.columns.time])
        if not self.grouped:
            return time
        impression = row[self.columns.impression_id]
        if impression is None or not cell(impression):
            raise DataError("no impression id", BAD_ID)
        return time, impression

    def read(self, columns: list[str], rows: RowLog) -> Iterator[list[Located]]:
        """Each event as its rows; rows whose time is missing go to `rows` as rejected."""

        def reject(name: str, err: DataError) -> None:
            rows.count(name, "rows")
            rows.reject(name, err)

        wanted = sorted({c for c in [self.columns.time, *columns] if c})
        located = in_order(self.tables, wanted, self._order, reject)
        if not self.grouped:
            for event in located:
                yield [event]
            return
        yield from self._impressions(located, rows)

    def _impressions(self, located: Iterator[Located], rows: RowLog) -> Iterator[list[Located]]:
        """Consecutive rows with one impression id; an id seen again later is a row error
        (the rows of one impression must share one time). Memory: one entry per impression."""
        column = self.columns.impression_id
        first_row: dict[Any, str] = {}
        group: list[Located] = []
        for name, number, row in located:
            imp = row[column]
            if group and imp == group[0][2][column]:
                group.append((name, number, row))
                continue
            if group:
                yield group
            group = []
            if imp in first_row:
                rows.count(name, "rows")
                rows.reject(
                    name,
                    DataError(
                        f"{name}: row {number}: impression id {imp!r} was already used at "
                        f"{first_row[imp]} at another time; the rows of one impression share "
                        "one time",
                        DUPLICATE_IMPRESSION,
                    ),
                )
                continue
            first_row[imp] = f"{name}: row {number}"
            group = [(name, number, row)]
        if group:
            yield group

    def count(self) -> int:
        return sum(1 for _ in self.read([self.columns.impression_id], RowLog("skip", warn=False)))


def _split_sizes(events: int, dev_fraction: float, source: str) -> tuple[int, int]:
    dev = max(1, round(events * dev_fraction))
    if events - dev < 1:
        raise DataError(f"{source}: {events} event(s) with a time: too few for a train/dev split")
    return events - dev, dev


def _history_of(value: Any, catalog: Catalog, where: str) -> list[int]:
    refs = value.split() if isinstance(value, str) else list(value or [])
    return [catalog.row(ref, None, f"{where}: history") for ref in refs]


@dataclass
class ImpressionWriter:
    """Writes events as behaviors rows, split by position, and keeps the users' histories."""

    table: TableCorpusConfig
    catalog: Catalog
    rows: RowLog
    out: Path
    train_events: int
    sampler: NegativeSampler | None
    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    # catalog rows, latest last: an array of 20 takes 180 bytes, a deque of them 760
    histories: dict[str, array] = field(default_factory=dict)

    def write(self, events: Iterator[list[Located]]) -> None:
        handles = {s: open(self.out / s / "behaviors.tsv", "w", encoding="utf-8") for s in SPLITS}  # noqa: SIM115
        try:
            for position, event in enumerate(events):
                split = "train" if position < self.train_events else "dev"
                line = self._event(event, split)
                if line:
                    handles[split].write(line)
        finally:
            for handle in handles.values():
                handle.close()

    def _event(self, event: list[Located], split: str) -> str:
        columns = self.columns
        name, number, first = event[0]
        where = f"{name}: row {number}"
        shown: list[tuple[int, int]] = []  # (catalog row, label)
        for row_name, row_number, row in event:
            self.rows.count(row_name, "rows")
            at = f"{row_name}: row {row_number}"
            try:
                if not cell(row[columns.user_id]):
                    raise DataError(f"{at}: empty user id", EMPTY_USER)
                item = self.catalog.row(
                    row[columns.item],
                    row[columns.item_language] if columns.item_language else "",
                    at,
                )
                label = _label(row[columns.label], at) if columns.label else 1
            except DataError as err:
                self.rows.reject(row_name, err)
                continue
            shown.append((item, label))
        if not shown:
            return ""
        user = cell(first[columns.user_id])
        try:
            history = self._history(user, first, where)
            candidates = self._candidates(shown, history, where)
        except DataError as err:
            for _ in shown:  # every row of the event goes with it
                self.rows.reject(name, err)
            return ""
        self.rows.count(name, "kept", len(shown))
        history_of = self.histories.get(user)
        if history_of is None:
            history_of = self.histories[user] = array("i")
        history_of.extend([item for item, label in shown if label])
        if len(history_of) > self.table.max_history:
            del history_of[: len(history_of) - self.table.max_history]
        self.written[split] += 1
        refs = self.catalog.refs
        return (
            "\t".join(
                [
                    str(self.written[split]),
                    user,
                    cell(first[columns.time]),
                    " ".join([refs[r] for r in history[-self.table.max_history :]]),
                    " ".join([f"{refs[r]}-{label}" for r, label in candidates]),
                ]
            )
            + "\n"
        )

    @property
    def columns(self) -> TableColumnsConfig:
        return self.table.columns

    def _history(self, user: str, row: Row, where: str) -> list[int]:
        if self.columns.history:
            return _history_of(row[self.columns.history], self.catalog, where)
        return self.histories[user].tolist() if user in self.histories else []

    def _candidates(
        self, shown: list[tuple[int, int]], history: list[int], where: str
    ) -> list[tuple[int, int]]:
        if self.sampler is None:  # an impression log: what was shown, as it was logged
            if not any(label for _, label in shown):
                raise DataError(f"{where}: impression has no clicked item (label 1)", NO_CLICK)
            return shown
        click = shown[0][0]
        negatives = self.sampler.sample(click, history)
        if not negatives:
            raise DataError(
                f"{where}: no item to draw a negative from for {self.catalog.refs[click]} "
                f"(data.table.negatives: {self.table.negatives})",
                NO_NEGATIVE,
            )
        candidates = [(neg, 0) for neg in negatives]
        candidates.insert(self.sampler.place(len(candidates) + 1), (click, 1))
        return candidates


def _train_clicks(events: Events, catalog: Catalog, train_events: int) -> np.ndarray:
    """Clicks per catalog row in the training events (popularity-weighted negatives)."""
    columns = events.columns
    clicks = np.zeros(len(catalog.keys), dtype=np.int64)
    wanted = [columns.item, columns.item_language]
    for position, event in enumerate(events.read(wanted, RowLog("skip", warn=False))):
        if position == train_events:
            break
        for _, _, row in event:
            try:
                lang = row[columns.item_language] if columns.item_language else ""
                clicks[catalog.row(row[columns.item], lang, "")] += 1
            except DataError:
                continue  # reported by the writing pass
    return clicks


# ---------------------------------------------------------------------------- the corpus


def _mapped(columns: TableColumnsConfig, names: tuple[str, ...]) -> dict[str, str]:
    return {f"data.table.columns.{n}": getattr(columns, n) for n in names}


def convert_tables(data: DataConfig, root: Path) -> dict[str, Any]:
    """The MIND-format corpus in `root` for `data.table` (converted, or found up to date);
    returns corpus.json."""
    table, columns = data.table, data.table.columns
    cache = root / ".table-cache"  # datasets' Arrow copies of the tables
    items = open_tables(table.items, "data.table.items", table, cache)
    logs = open_tables(table.interactions, "data.table.interactions", table, cache)
    key = io.fingerprint(
        {
            "table": asdict(table),
            "default_language": data.default_language,
            "on_error": data.on_error,
            "items": [t.fingerprint for t in items],
            "interactions": [t.fingerprint for t in logs],
        }
    )
    record_path = root / RECORD
    if record_path.is_file() and json.loads(record_path.read_text()).get("fingerprint") == key:
        return json.loads(record_path.read_text())
    check_columns(
        items,
        _mapped(columns, ("item_id", "language", "title", "abstract", "category", "subcategory")),
    )
    event_columns = ("user_id", "time", "item", "item_language", "label", "impression_id")
    check_columns(logs, _mapped(columns, (*event_columns, "history")))
    tmp = root / ".table-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rows = RowLog(data.on_error)
    log.info("converting %s and %s into %s", table.items, table.interactions, root)
    catalog, per_language = write_items(items, data, rows, tmp)
    events = Events(logs, columns)
    train_events, dev_events = _split_sizes(events.count(), table.dev_fraction, table.interactions)
    sampler = None
    if not columns.impression_id:
        clicks = (
            _train_clicks(events, catalog, train_events)
            if table.negatives == "popularity"
            else None
        )
        sampler = NegativeSampler(
            [lang for _, lang in catalog.keys],
            catalog.categories,
            table.negatives,
            table.negatives_per_click,
            table.seed,
            clicks,
        )
    for split in SPLITS:
        (tmp / split).mkdir()
    writer = ImpressionWriter(table, catalog, rows, tmp, train_events, sampler)
    writer.write(events.read([getattr(columns, n) for n in (*event_columns, "history")], rows))
    for split in SPLITS:
        if not writer.written[split]:
            raise DataError(f"{table.interactions}: no usable {split} impression")
    for name in ("news", *SPLITS):
        shutil.rmtree(root / name, ignore_errors=True)
        io.publish(tmp / name, root / name)
    tmp.rmdir()
    record = {
        "source": "table",
        "fingerprint": key,
        "languages": sorted(per_language),
        "items": per_language,
        "events": {"train": train_events, "dev": dev_events},
        "impressions": writer.written,
        "negatives": None if sampler is None else table.negatives,
        # same-category clicks whose category the history had used up: one negative from the
        # whole language instead
        "negatives_outside_category": 0 if sampler is None else sampler.outside_category,
        "rows": rows.summary(),
    }
    io.write_json(record_path, record, indent=2, ensure_ascii=False)
    skipped = rows.skipped_total()
    log.info(
        "table corpus: %d items, impressions %s%s",
        len(catalog.keys),
        writer.written,
        f"; skipped {skipped} rows (counts per table and reason in {record_path})"
        if skipped
        else "",
    )
    return record
