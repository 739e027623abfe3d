"""Shard files checked against what manifest.json records of them: cheaply at every read, in
full on demand and before evaluation.

tarfile reads a tar cut between two members as a shorter, valid one, so a truncated shard used
to give fewer samples without a word (and evaluation scored 162 of 200 impressions as a full
result). Every tar's size, sample count and sha256 are in the manifest (mlrec.data.layout's
ShardFile); they are checked here, and only here:

  every read (`read_shard`, the one way samples leave a tar): the file exists and has the
      recorded size before reading, and held the recorded number of samples once read to its end
      (a reader that stops early, such as a peek or eval.max_impressions, checks no count);
  before evaluation (`check_hashes` on the dev sets, small beside train): sha256, since a changed
      byte keeps the size and the count and would be scored as if it were the data;
  `mlrec shard --verify` (`verify_folder`): all of it for every tar, the tokenizer's sha256 and
      the item table's shape, reporting each problem instead of stopping at the first.

A mismatch is a ShardError, a DataError (the CLI prints one line, no traceback) that names the
file, what the manifest expects, what was found and how to write the file again.
"""

from __future__ import annotations

import hashlib
import io as bytes_io
import json
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from mlrec import io
from mlrec.data import remote
from mlrec.data.layout import (
    ITEM_TOKENS,
    ITEMS_RECORD,
    TOKENIZER_FILE,
    ShardFile,
    load_manifest,
    shard_files,
)
from mlrec.data.rows import DataError

_WORKER_PREFIX = "Caught ShardError in DataLoader worker"


class ShardError(DataError):
    """A shard folder's file that is not what manifest.json says it is."""

    def __init__(self, message: str) -> None:
        super().__init__(_own_message(message))


def _own_message(message: str) -> str:
    """The message itself, also when a DataLoader worker raised it: torch rebuilds a worker's
    error in the training process from the whole traceback text ("Caught ShardError in
    DataLoader worker process 0. Original Traceback ..."), which the CLI would print as is; our
    messages are one line, the traceback's last."""
    if not message.startswith(_WORKER_PREFIX):
        return message
    last = message.rstrip().rsplit("\n", 1)[-1]
    return last.split(f"{ShardError.__name__}: ", 1)[-1]


def _unit_fix(shard: ShardFile) -> str:
    # a re-run alone skips the unit: its record says it is finished
    return (
        f"remove {shard.unit_record} and run `mlrec shard` for {shard.path.parent} again to "
        "rewrite that unit (`mlrec shard --verify` checks every file)"
    )


def _items_fix(shards_dir: Path) -> str:
    return (
        f"remove {shards_dir / ITEMS_RECORD} and run `mlrec shard` for {shards_dir} again to "
        "rebuild the item table and tokenizer (`mlrec shard --verify` checks every file)"
    )


def _shard_error(shard: ShardFile, problem: str) -> ShardError:
    if shard.url:  # the tars are written where the manifest is: the mirror is not the fix
        fix = f"write the shards again with `mlrec shard --out {shard.url.rsplit('/', 1)[0]}`"
        return ShardError(f"{shard.url}: {problem}; {fix}")
    return ShardError(f"{shard.path}: {problem}; {_unit_fix(shard)}")


def _size(shard: ShardFile) -> int:
    return remote.size(shard.url) if shard.url else shard.path.stat().st_size


def _open(shard: ShardFile) -> Any:
    """The tar's bytes as a file: a remote one fetched whole (retried as a whole)."""
    if shard.url:
        data = remote.fetch(shard.url)
        if len(data) != shard.bytes:  # the size check may have read a listing made earlier
            raise _shard_error(shard, _size_problem(len(data), shard))
        return bytes_io.BytesIO(data)
    return open(shard.path, "rb")  # noqa: SIM115 - closed by the caller's with


def _size_problem(found: int, shard: ShardFile) -> str:
    return f"{found} bytes, but the manifest records {shard.bytes} (truncated or replaced?)"


def read_ahead(shard: ShardFile) -> None:
    """Start fetching a remote shard that is read next (nothing for a local one)."""
    if shard.url:
        remote.prefetch(shard.url)


def check_size(shard: ShardFile) -> None:
    """The cheap check before a read: the file is there, with the recorded size."""
    try:
        found = _size(shard)
    except remote.RemoteError as err:
        raise _shard_error(shard, str(err).removeprefix(f"{shard.url}: ")) from None
    except FileNotFoundError:
        raise _shard_error(
            shard, f"missing (the manifest lists it: {shard.samples} samples, {shard.bytes} bytes)"
        ) from None
    if found != shard.bytes:
        raise _shard_error(shard, _size_problem(found, shard))


def check_count(shard: ShardFile, found: int) -> None:
    """The cheap check after a read to the end: as many samples as were written."""
    if found != shard.samples:
        raise _shard_error(shard, f"{found} samples read, but the manifest records {shard.samples}")


def check_sha256(shard: ShardFile) -> None:
    """The full check: every byte as written (the file must exist: check_size first)."""
    if shard.url:
        with _open(shard) as handle:
            found = hashlib.sha256(handle.read()).hexdigest()
    else:
        found = io.sha256(shard.path)
    if found != shard.sha256:
        raise _shard_error(
            shard,
            f"sha256 {found}, but the manifest records {shard.sha256} (changed since written)",
        )


def check_hashes(shards: Iterable[ShardFile]) -> None:
    """Size and sha256 of each shard; the first mismatch raises."""
    for shard in shards:
        check_size(shard)
        check_sha256(shard)


def _samples(shard: ShardFile) -> Iterator[dict[str, Any]]:
    """The tar's members as impression samples (one JSON member each), in order; a tar or a
    member that cannot be read is a ShardError, not a tarfile or json traceback."""
    try:
        handle = _open(shard)
    except FileNotFoundError:
        raise _shard_error(shard, "missing (it was there a moment ago)") from None
    except remote.RemoteError as err:
        raise _shard_error(shard, str(err).removeprefix(f"{shard.url}: ")) from None
    try:
        with handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    payload = tar.extractfile(member).read()  # type: ignore[union-attr]
                    yield json.loads(payload)
    except (tarfile.TarError, OSError, ValueError) as err:  # ValueError: bad JSON or UTF-8
        raise _shard_error(shard, f"cannot be read as a shard ({err})") from None


def read_shard(shard: ShardFile) -> Iterator[dict[str, Any]]:
    """The impression samples of one shard, checked: size before, count after the last."""
    check_size(shard)
    count = 0
    for sample in _samples(shard):
        count += 1
        yield sample
    check_count(shard, count)


def _shard_problem(shard: ShardFile) -> str | None:
    try:
        deque(read_shard(shard), maxlen=0)  # size, readability and count
        check_sha256(shard)
    except ShardError as err:
        return str(err)
    return None


def _items_problems(shards_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The tokenizer against its recorded sha256, the item table against its recorded shape
    (items.json records no hash of it)."""
    problems = []
    tokenizer = shards_dir / TOKENIZER_FILE
    expected = manifest["tokenizer"]["sha256"]
    found = io.sha256(tokenizer) if tokenizer.is_file() else "missing"
    if found != expected:
        problems.append(f"{tokenizer}: sha256 {found}, but the manifest records {expected}")
    items = manifest["items"]
    shape = (items["count"], items["max_tokens"])
    try:
        found_shape = np.load(shards_dir / ITEM_TOKENS, mmap_mode="r").shape
    except (OSError, ValueError) as err:  # missing, or shorter than its header says
        found_shape = f"unreadable ({err})"
    if found_shape != shape:
        problems.append(
            f"{shards_dir / ITEM_TOKENS}: shape {found_shape}, but the manifest records {shape}"
        )
    return [f"{problem}; {_items_fix(shards_dir)}" for problem in problems]


def verify_folder(shards_dir: str | Path, report: Callable[[str], None]) -> str:
    """`mlrec shard --verify`: every file the manifest lists, without writing anything; each
    problem goes to `report` as one line when found, and the summary is returned when there is
    none (else raised as a ShardError)."""
    shards_dir = Path(shards_dir)
    manifest = load_manifest(shards_dir)
    shards = [shard for split in manifest["splits"] for shard in shard_files(shards_dir, split)]
    problems = 0
    for problem in chain(_items_problems(shards_dir, manifest), map(_shard_problem, shards)):
        if problem:
            report(problem)
            problems += 1
    summary = f"verified {len(shards)} shards, {sum(s.samples for s in shards)} samples"
    if problems:
        raise ShardError(f"{summary}: {problems} problem(s) in {shards_dir}, listed above")
    return f"{summary}: ok"
