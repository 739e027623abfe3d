"""Tables the user keeps: Parquet, JSONL or CSV files (local paths, globs or fsspec URLs) and
Hugging Face datasets, read through `datasets`, row by row with the row's number.

One file is one `Table` (so an error names the file and the row: 1-based, a CSV's header not
counted, a JSONL's blank lines not counted); a Hugging Face dataset folder or name is one table
named `<name>[<split>]`. Without streaming a file is converted once into `datasets`' Arrow cache
(memory-mapped, so larger than memory is fine) and can be sorted; with streaming it is read as
it lies, without that copy. A remote file (s3://, gs://, https://) is first copied into the
corpus folder's table cache through fsspec, once per version of the file.
"""

from __future__ import annotations

import heapq
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlrec import io
from mlrec.config import ConfigError, TableCorpusConfig
from mlrec.data.rows import DataError

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_GLOB = re.compile(r"[*?\[]")
_BATCH = 4096
ROW = "__row"  # the column a sorted table keeps its rows' original numbers in

Row = dict[str, Any]


@dataclass
class Table:
    """One file or dataset: `data` is a `datasets.Dataset` (or `IterableDataset` when
    streaming); `fingerprint` identifies its content for re-conversion checks."""

    name: str
    data: Any
    fingerprint: str

    def columns(self) -> list[str] | None:
        return self.data.column_names  # None for some streamed formats until read

    def rows(self, columns: list[str] | None = None) -> Iterator[tuple[int, Row]]:
        """(row number, {column: value}); only `columns` are read when given."""
        sorted_rows = ROW in (self.data.column_names or [])
        if columns and sorted_rows:
            columns = [*columns, ROW]
        data = self.data.select_columns(columns) if columns else self.data
        number = 0
        for batch in data.iter(batch_size=_BATCH):
            names = list(batch)
            for values in zip(*batch.values(), strict=True):
                number += 1
                row = dict(zip(names, values, strict=True))
                yield (row.pop(ROW) + 1 if sorted_rows else number), row

    def sorted_by(self, keys: list[str]) -> Table:
        """The table in `keys` order (stable: ties keep file order), each row keeping its
        number; a streamed table is returned as it is (its order is checked as it is read)."""
        if not hasattr(self.data, "sort") or _in_order(self.data.data, keys):
            return self
        import numpy as np

        numbered = self.data.add_column(ROW, np.arange(len(self.data), dtype=np.int64))
        with warnings.catch_warnings():  # pyarrow's deprecation inside datasets' sort
            warnings.simplefilter("ignore", FutureWarning)
            ordered = numbered.sort([*keys, ROW])
        return Table(self.name, ordered, self.fingerprint)


def _in_order(arrow: Any, keys: list[str]) -> bool:
    """Whether the rows are already in `keys` order (a log exported by time usually is): then
    the sort, its index column and its indirect reads are skipped, for the same order."""
    import pyarrow.compute as pc

    table = arrow.table if hasattr(arrow, "table") else arrow
    if table.num_rows < 2:
        return True
    ties = None  # rows equal to the one before in every key so far
    for key in keys:
        column = table.column(key)
        now, before = column.slice(1), column.slice(0, table.num_rows - 1)
        if pc.any(pc.is_null(column)).as_py():
            return False  # the sort puts missing keys last; let it
        earlier = pc.less(now, before)
        if ties is not None:
            earlier = pc.and_(earlier, ties)
        if pc.any(earlier).as_py():
            return False
        equal = pc.equal(now, before)
        ties = equal if ties is None else pc.and_(ties, equal)
    return True


def open_tables(spec: str, key: str, table: TableCorpusConfig, cache_dir: Path) -> list[Table]:
    """The tables `spec` names (data.table.items or .interactions, `key` naming it in errors)."""
    import datasets

    datasets.disable_progress_bars()  # one line per file in our log instead
    fmt = table.format
    local = Path(spec).expanduser()
    if fmt == "hf" or (not fmt and local.is_dir()):
        return [_hf_table(spec, table, cache_dir)]
    files = _expand(spec, key)
    tables = []
    for url, info in files:
        file_format = fmt or FORMATS.get(Path(url.split("?")[0]).suffix.lower())
        if not file_format:
            raise ConfigError(
                f"{key}: cannot tell the format of {url} from its extension "
                f"({', '.join(FORMATS)}); set data.table.format"
            )
        try:
            data = datasets.load_dataset(
                file_format,
                data_files=_local_copy(url, info, cache_dir),
                split="train",
                streaming=table.streaming,
                cache_dir=str(cache_dir),
            )
        except Exception as err:  # noqa: BLE001 - datasets raises many kinds; one message
            raise DataError(f"{url}: cannot be read as {file_format}: {err}") from None
        tables.append(Table(url, data, f"{url}:{info}"))
    return tables


def _local_copy(url: str, stamp: str, cache_dir: Path) -> str:
    """A local path for `url`: itself, or a copy of a remote file fetched through fsspec once
    per version (`stamp`: size and modification). `datasets` would fetch it itself, but not
    under HF_HUB_OFFLINE, which is there to keep the model hub away, not the user's own store."""
    if "://" not in url:
        return url
    import hashlib

    from mlrec.data.remote import filesystem, retried

    version = hashlib.sha256(f"{url}\0{stamp}".encode()).hexdigest()[:16]
    target = cache_dir / "downloads" / version / url.rstrip("/").rsplit("/", 1)[-1]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = io.temporary(target)
        retried(url, lambda: filesystem(url).get_file(url, str(tmp)))
        io.publish(tmp, target)
    return str(target)


def _expand(spec: str, key: str) -> list[tuple[str, str]]:
    """(URL, size and modification) of each file a path, glob or URL names, in name order."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(spec)
    paths = sorted(fs.glob(path)) if _GLOB.search(path) else [path]
    found = []
    for each in paths:
        try:
            info = fs.info(each)
        except (FileNotFoundError, OSError) as err:
            raise ConfigError(f"{key}: {spec}: not found ({err})") from None
        if info.get("type") == "directory":
            raise ConfigError(
                f"{key}: {each} is a folder; name its files (a glob: {each}/*.parquet) or set "
                "data.table.format: hf for a Hugging Face dataset folder"
            )
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        url = each if local else fs.unstrip_protocol(each)  # errors name a local file plainly
        found.append((url, f"{info.get('size')}:{stamp}"))
    if not found:
        raise ConfigError(f"{key}: no file matches {spec}")
    return found


def _hf_table(spec: str, table: TableCorpusConfig, cache_dir: Path) -> Table:
    """A dataset folder written by `save_to_disk`, or anything `load_dataset` takes (a folder
    of data files, or a dataset name when the hub is reachable)."""
    import datasets

    name = f"{spec}[{table.split}]"
    local = Path(spec).expanduser()
    try:
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            data = datasets.load_from_disk(str(local))
            if isinstance(data, datasets.DatasetDict):
                data = data[table.split]
            fingerprint = data._fingerprint
            if table.streaming:
                data = data.to_iterable_dataset()
        else:
            data = datasets.load_dataset(
                spec, split=table.split, streaming=table.streaming, cache_dir=str(cache_dir)
            )
            fingerprint = getattr(data, "_fingerprint", "") or spec
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; one message
        raise DataError(f"{name}: cannot be read as a Hugging Face dataset: {err}") from None
    return Table(name, data, str(fingerprint))


def check_columns(tables: list[Table], wanted: dict[str, str]) -> None:
    """Every mapped column (config key -> column) is in every table that lists its columns."""
    for table in tables:
        have = table.columns()
        if have is None:
            continue
        for key, column in wanted.items():
            if column and column not in have:
                raise ConfigError(
                    f"{key}: {table.name} has no column {column!r} (its columns: {', '.join(have)})"
                )


Located = tuple[str, int, Row]  # table name, row number, row


def in_order(
    tables: list[Table],
    columns: list[str],
    key: Callable[[Row], Any],
    reject: Callable[[str, DataError], None],
) -> Iterator[Located]:
    """The rows of all `tables` in `key` order, merged (each table must already be in that
    order: sorted, or checked here as it streams). A row whose key cannot be read (`key`
    raises DataError) goes to `reject` and is left out of the order."""

    def keyed(index: int, table: Table) -> Iterator[tuple[Any, int, int, Located]]:
        last = None
        for number, row in table.rows(columns):
            try:
                order = key(row)
            except DataError as err:
                reject(table.name, DataError(f"{table.name}: row {number}: {err}", err.reason))
                continue
            if last is not None and order < last:
                raise DataError(
                    f"{table.name}: row {number}: earlier than row {number - 1} (streamed logs "
                    "must be sorted by time; sort it, or set data.table.streaming: false)"
                )
            last = order
            yield order, index, number, (table.name, number, row)

    merged = heapq.merge(*(keyed(i, t) for i, t in enumerate(tables)))
    try:
        for _, _, _, located in merged:
            yield located
    except TypeError as err:  # an int time in one file, a string in another
        names = ", ".join(t.name for t in tables)
        raise DataError(f"the time columns of {names} cannot be compared: {err}") from None
