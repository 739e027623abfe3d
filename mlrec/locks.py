"""Exclusive use of a folder by one command: a run directory while it trains, a shards folder
while it is written.

Two `mlrec train` runs in one run directory used to interleave: the second died, and
config.yaml held its settings while the weights were the first run's. Two `mlrec shard` runs
into one folder crashed each other and left temporary files. Now the first takes the folder's
lock and the second stops at once with an error naming the holder.

The lock is `flock(2)` on `<folder>/.mlrec.lock`, so the kernel drops it when its holder exits
in any way, kill -9 included: a crashed run never leaves a stale lock to clean up by hand, and
resuming it needs nothing. The file also records who holds it (command, pid, host, start time;
one line per holder) for the message; the records are informative, the flock decides. On a
cluster the folder must be on a file system with working flock across nodes (local disks,
NFSv4, Lustre mounted with `-o flock`, GPFS); with `-o localflock` or `noflock` two nodes would
not see each other's lock.

A shared lock lets several holders in at once and keeps exclusive ones out: the slices of one
sharding job (a SLURM array) write side by side, while a whole `mlrec shard` into the same
folder is refused until they end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".mlrec.lock"

# Locks this process holds, by file: a stage that calls another (the quickstart trains, then
# evaluates) re-enters its own lock instead of blocking on it (flock is per open file).
_held: dict[Path, list] = {}


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) shares its parent's lock: were the parent killed,
    the orphaned worker would hold it until it noticed. The child drops its copies of the lock
    files; close only: flock(LOCK_UN) would release the parent's lock with them."""
    for entries in _held.values():
        if entries and entries[0] is not None:
            entries[0].close()
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock; the message names it."""


def holder_record(what: str) -> dict:
    return {
        "what": what,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def describe(records: list[dict]) -> str:
    if not records:
        return "another process (no record of which)"
    return "; ".join(
        f"`{r.get('command', '?')}` (pid {r.get('pid', '?')} on {r.get('host', '?')}, since "
        f"{r.get('started', '?')}): {r.get('what', '?')}"
        for r in records
    )


def _live_records(handle) -> list[dict]:
    """The holders' records, one JSON object per line, without those of processes on this host
    that have ended (shared holders cannot remove their own line when they leave: see release)."""
    handle.seek(0)
    records = []
    for line in handle.read().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(record, dict) and not _ended(record):
            records.append(record)
    return records


def _ended(record: dict) -> bool:
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False  # another node's process: it cannot be checked from here
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(folder: str | Path, what: str, *, shared: bool = False, name: str = LOCK_FILE):
    """Take the lock of `folder` (created if missing) or raise FolderInUse; returns a handle
    for `release`. `what` says in the holder's record what it is doing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / name).resolve()
    if path in _held:
        _held[path].append(None)  # re-entered by this process
        return path
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            handle.close()
            raise
        records = _live_records(handle)
        handle.close()
        raise FolderInUse(
            f"{folder} is in use by {describe(records)}. Wait for it to end, or choose another "
            "folder"
        ) from None
    if not shared:
        handle.truncate(0)  # earlier holders are all gone
    # "a+" appends: shared holders add their line beside the others'
    handle.write(json.dumps(holder_record(what)) + "\n")
    handle.flush()
    _held[path] = [handle]
    return path


def release(token: Path) -> None:
    entries = _held.get(token)
    if not entries:
        return
    handle = entries.pop()
    if entries:
        return  # an outer acquire of this process still holds it
    del _held[token]
    # the record stays until the next exclusive holder clears it: editing it here would race
    # with a process that has just taken the lock and written its own
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def locked(
    folder: str | Path, what: str, *, shared: bool = False, name: str = LOCK_FILE
) -> Iterator[None]:
    token = acquire(folder, what, shared=shared, name=name)
    try:
        yield
    finally:
        release(token)
