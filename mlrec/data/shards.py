"""Impression shards: webdataset tars whose samples reference rows of the item table.

The folder's layout (file names, the manifest) is mlrec.data.layout's.

A *unit* is N = `data.shard_max_samples` consecutive rows of one behaviors file. Units are the
grain of parallelism and restart: a pool of processes (`--workers`) or the tasks of a SLURM array
(`--slice i/n`) each write some of them, every file through a temporary name and a rename, and the
unit's .json last; a re-run skips a unit whose .json has the same inputs fingerprint. `merge`
then writes the manifest from the records. One tar per language (the language of most of the
impression's candidates) lets the loader sample languages at the rate it chooses. Tar members
carry fixed metadata, so the same input gives byte-identical shards. Memory: a unit streams its
rows; the only per-corpus structure is the item id -> row map.

Speed: writing a unit costs 4-6x less per row than parsing each row into objects, json.dumps
and tarfile.addfile did: samples.py joins a sample's JSON from strings (rows it cannot take apart
go through the reference parser, which raises the usual errors) and tars.py writes tarfile's bytes
without tarfile's per-member overhead. Tokenising the item table is then the other large cost.
"""

from __future__ import annotations

import json
import logging
from array import array
from bisect import bisect_right
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlrec import io
from mlrec.config import Config, DataConfig
from mlrec.data.corpus import Behaviors, behaviors_files, prepare_corpus
from mlrec.data.items import build_items
from mlrec.data.layout import ITEMS_RECORD, MANIFEST, item_keys
from mlrec.data.mind import line_bytes
from mlrec.data.rows import DUPLICATE_IMPRESSION, DataError, RowLog
from mlrec.data.samples import SampleEncoder
from mlrec.data.tars import TarWriter
from mlrec.data.tokenizer import TokenizerSpec
from mlrec.io import file_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInputs:
    """What sharding reads of a config: the data section, the corpus and shards folders (as
    `Config` resolves them against the run directory) and the item table's tokenizer."""

    data: DataConfig
    corpus_dir: Path
    shards_dir: Path
    tokenizer: TokenizerSpec

    @classmethod
    def of(cls, cfg: Config) -> ShardInputs:
        return cls(cfg.data, cfg.corpus_dir, cfg.shards_dir, TokenizerSpec.from_model(cfg.model))


@dataclass(frozen=True)
class Unit:
    """Rows [chunk * N, chunk * N + N) of one split's behaviors file, found by byte offset."""

    split: str
    chunk: int
    offset: int
    first_line: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.chunk:06d}"


@dataclass(frozen=True)
class UnitJob:
    """Everything a (possibly separate) process needs to write one unit."""

    unit: Unit
    source: Path
    out: Path
    rows_per_unit: int
    default_language: str
    on_error: str
    fingerprint: str
    items: str  # the item table's fingerprint
    # line -> (impression id, first line) of rows that repeat an impression id (data.on_error
    # skip; under strict the plan stops at the first)
    repeated: dict[int, tuple[int, int]] = field(default_factory=dict)


def plan_units(path: Path, split: str, rows_per_unit: int) -> tuple[list[Unit], int]:
    """The units of one behaviors file and its number of rows, in one pass over its bytes."""
    units, rows, offset = [], 0, 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.rstrip(b"\r\n"):
                if rows % rows_per_unit == 0:
                    units.append(Unit(split, rows // rows_per_unit, offset, number))
                rows += 1
            offset += len(raw)
    return units, rows


def repeated_impressions(path: Path) -> dict[int, tuple[int, int]]:
    """Line -> (impression id, line of its first use) for every row whose impression id an
    earlier row of the file already has. Impression ids name an impression in evaluation and
    in the shards' member names: two rows with one id would be merged or break the tar. Memory:
    two int64 per row (the ids and lines as arrays, not a dict), found by one stable sort."""
    ids, lines = array("q"), array("q")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            head = line_bytes(number, raw).split(b"\t", 1)[0].strip()
            if head.isdigit():  # other rows are rejected by the row parser, with their reason
                ids.append(int(head))
                lines.append(number)
    by_id = np.frombuffer(ids, dtype=np.int64)
    order = np.argsort(by_id, kind="stable")  # within one id, rows keep their file order
    sorted_ids, line_of = by_id[order], np.frombuffer(lines, dtype=np.int64)[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    run_start = starts[np.searchsorted(starts, np.arange(len(order)), side="right") - 1]
    return {
        int(line_of[i]): (int(sorted_ids[i]), int(line_of[run_start[i]]))
        for i in np.flatnonzero(run_start != np.arange(len(order)))
    }


def _unit_fingerprint(
    data: DataConfig, items_key: str, source: dict[str, Any], behaviors: Behaviors
) -> str:
    inputs = [
        items_key,
        source["sha256"],
        data.shard_max_samples,
        behaviors.language,
        data.on_error,
    ]
    return io.fingerprint(inputs)


_ENCODERS: dict[tuple[Path, str, str], SampleEncoder] = {}


def _encoder(job: UnitJob) -> SampleEncoder:
    """The item map, read once per process (a pool worker writes many units). Keyed by the item
    table's fingerprint too: a rebuilt table (other news files) renumbers the rows."""
    key = (job.out, job.items, job.default_language)
    if key not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[key] = SampleEncoder(item_keys(job.out), job.default_language)
    return _ENCODERS[key]


def _repeated_error(path: Path, number: int, impression: int, first: int) -> DataError:
    return DataError(
        f"{path}:{number}: impression id {impression} is already used at line {first}; "
        "impression ids must be unique within a behaviors file (were two files concatenated?)",
        DUPLICATE_IMPRESSION,
    )


def write_unit(job: UnitJob) -> dict[str, Any]:
    """Write one unit's tars and record (or return the record of a finished one)."""
    unit, out, source = job.unit, job.out, job.source
    record_path = out / f"{unit.name}.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["fingerprint"] == job.fingerprint and _tars_intact(out, record):
            return record
    for stale in out.glob(f"{unit.name}-*.tar"):
        stale.unlink()
    encode = _encoder(job).encode
    rows = RowLog(job.on_error)
    rows.file(source)
    tars: dict[str, TarWriter] = {}
    taken = 0
    with ExitStack() as open_tars, open(source, "rb") as handle:
        handle.seek(unit.offset)
        for number, raw in enumerate(handle, start=unit.first_line):
            raw = line_bytes(number, raw)
            if not raw:
                continue
            if taken == job.rows_per_unit:
                break
            taken += 1
            try:
                if number in job.repeated:
                    raise _repeated_error(source, number, *job.repeated[number])
                lang, impression, payload = encode(raw, source, number)
            except DataError as err:
                rows.reject(source, err)
                continue
            tar = tars.get(lang)
            if tar is None:
                tmp = out / f".{unit.name}-{lang}.tar.tmp"
                tar = tars[lang] = open_tars.enter_context(TarWriter(tmp))
            tar.add(f"{unit.split}-{impression}.json", payload)
        for tar in tars.values():
            tar.close()
    rows.count(source, "rows", taken)
    rows.count(source, "kept", sum(tar.samples for tar in tars.values()))
    shards = []
    for lang in sorted(tars):
        final = out / f"{unit.name}-{lang}.tar"
        io.publish(tars[lang].path, final)
        shards.append(
            {
                "name": final.name,
                "language": lang,
                "samples": tars[lang].samples,
                "bytes": tars[lang].size,
                "sha256": tars[lang].sha256,
            }
        )
    record = {
        "fingerprint": job.fingerprint,
        "unit": unit.name,
        "rows": rows.files,
        "shards": shards,
    }
    io.write_json(record_path, record, indent=1, ensure_ascii=False)
    return record


def _tars_intact(out: Path, record: dict[str, Any]) -> bool:
    """A finished unit's tars are all there at their recorded sizes (the cheap check: a
    truncated or deleted tar is written again by a re-run, not kept because its record is)."""
    for shard in record["shards"]:
        path = out / shard["name"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            log.warning("%s is missing or not as written: its unit is written again", path)
            return False
    return True


def _items_record(shards_dir: Path) -> dict[str, Any]:
    path = shards_dir / ITEMS_RECORD
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build the item table first with `mlrec shard --items`"
        )
    return json.loads(path.read_text())


def unit_jobs(inputs: ShardInputs) -> dict[str, Any]:
    """Per split: the source record, its row count and the jobs of its units."""
    data = inputs.data
    items_key = _items_record(inputs.shards_dir)["fingerprint"]
    plan: dict[str, Any] = {}
    for behaviors in behaviors_files(data, inputs.corpus_dir):
        split, path = behaviors.split, behaviors.path
        source = file_record(path)
        units, rows = plan_units(path, split, data.shard_max_samples)
        repeated = repeated_impressions(path)
        if repeated and data.on_error == "strict":
            number = min(repeated)
            raise _repeated_error(path, number, *repeated[number])
        key = _unit_fingerprint(data, items_key, source, behaviors)
        jobs = [
            UnitJob(
                u,
                path,
                inputs.shards_dir,
                data.shard_max_samples,
                behaviors.language,
                data.on_error,
                key,
                items_key,
                unit_repeats,
            )
            for u, unit_repeats in zip(units, _by_unit(repeated, units), strict=True)
        ]
        plan[split] = {"source": source, "rows": rows, "jobs": jobs, "language": behaviors.language}
    return plan


def _by_unit(repeated: dict[int, tuple[int, int]], units: list[Unit]) -> list[dict]:
    """The repeated rows of each unit (units are consecutive line ranges)."""
    firsts = [u.first_line for u in units]
    out: list[dict[int, tuple[int, int]]] = [{} for _ in units]
    for number, what in repeated.items():
        out[bisect_right(firsts, number) - 1][number] = what
    return out


def write_units(jobs: list[UnitJob], workers: int, progress: bool) -> None:
    bar = tqdm(total=len(jobs), desc="sharding", disable=not progress, unit="shard")
    if workers <= 1:
        for job in jobs:
            write_unit(job)
            bar.update()
    else:
        # spawn, not fork: the parent may hold tokenizer threads, which fork would copy locked
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done in as_completed([pool.submit(write_unit, job) for job in jobs]):
                done.result()
                bar.update()
    bar.close()


def shard_slice(inputs: ShardInputs, index: int, count: int, progress: bool = True) -> int:
    """Write the units j with j % count == index (over both splits); returns how many."""
    plan = unit_jobs(inputs)
    jobs = [job for split in plan for job in plan[split]["jobs"]][index::count]
    write_units(jobs, 1, progress)
    return len(jobs)


def _unit_records(out: Path, jobs: list[UnitJob]) -> list[dict[str, Any]]:
    """The records of the units of `jobs`, each checked to be written for the current inputs."""
    records = []
    for job in jobs:
        path = out / f"{job.unit.name}.json"
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is None or record["fingerprint"] != job.fingerprint:
            raise FileNotFoundError(
                f"{path}: unit not written for the current inputs; run the missing "
                "`mlrec shard --slice I/N` tasks (or `mlrec shard`) again"
            )
        records.append(record)
    return records


def merge_shards(inputs: ShardInputs) -> dict[str, Any]:
    """Check every unit is written, remove leftovers, and write manifest.json."""
    out = inputs.shards_dir
    items = _items_record(out)
    plan = unit_jobs(inputs)
    rows = RowLog(inputs.data.on_error)
    rows.merge(items["rows"]["files"])
    splits: dict[str, Any] = {}
    wanted: set[str] = set()
    for split in plan:
        records = _unit_records(out, plan[split]["jobs"])
        for record in records:
            rows.merge(record["rows"])
        shards = [s for r in records for s in r["shards"]]
        wanted |= {f"{r['unit']}.json" for r in records} | {s["name"] for s in shards}
        per_language: dict[str, int] = {}
        for s in shards:
            per_language[s["language"]] = per_language.get(s["language"], 0) + s["samples"]
        splits[split] = {
            "impressions": sum(per_language.values()),
            "rows": plan[split]["rows"],
            "per_language": dict(sorted(per_language.items())),
            "shards": shards,
            "source": plan[split]["source"],
            "plain_ids_language": plan[split]["language"],
        }
        if not splits[split]["impressions"]:
            raise DataError(
                f"{plan[split]['source']['path']}: no usable impression ({split} split): "
                "nothing to train on or evaluate"
            )
    for leftover in [*out.glob("*.tar"), *out.glob("train-*.json"), *out.glob("dev*-*.json")]:
        if leftover.name not in wanted:  # from an earlier, larger corpus
            leftover.unlink()
    manifest = {
        "format": 2,
        "tokenizer": items["tokenizer"],
        "items": {k: items[k] for k in ("count", "max_tokens", "text_fields", "per_language")}
        | {"news_files": items["news_files"]},
        "splits": splits,
        "rows": rows.summary(),
        "config": asdict(inputs.data),  # as Config.to_dict() writes the section
    }
    io.write_json(out / MANIFEST, manifest, indent=2, ensure_ascii=False)
    skipped = rows.skipped_total()
    log.info(
        "wrote %d items and %s impressions to %s%s",
        items["count"],
        {s: splits[s]["impressions"] for s in splits},
        out,
        f"; skipped {skipped} malformed rows (counts per file and reason in the manifest)"
        if skipped
        else "",
    )
    for path, counts in rows.summary()["files"].items():
        if counts["skipped"]:
            log.warning("skipped in %s: %s", path, counts["skipped"])
    return manifest


def item_table(inputs: ShardInputs, progress: bool = True) -> dict[str, Any]:
    """The corpus (made on first use) and its item table in the shards folder (`mlrec shard
    --items`, the step every slice reads); returns items/items.json."""
    prepare_corpus(inputs.data, inputs.corpus_dir)
    inputs.shards_dir.mkdir(parents=True, exist_ok=True)
    return build_items(
        inputs.data, inputs.corpus_dir, inputs.tokenizer, inputs.shards_dir, progress
    )


def build_shards(inputs: ShardInputs, progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Item table, every unit (in `workers` processes), then the manifest."""
    item_table(inputs, progress)
    plan = unit_jobs(inputs)
    write_units([job for split in plan for job in plan[split]["jobs"]], workers, progress)
    return merge_shards(inputs)
