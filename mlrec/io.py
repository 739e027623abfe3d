"""Files: content hashes, fingerprints of inputs, and atomic writes.

Every file mlrec publishes (shards, item tables, checkpoints, manifests, vectors, caches) is
written under a temporary name in the same folder and then renamed into place, so a reader or a
re-run after a crash sees either the old file or the whole new one, never half of one. This module
is the one place that renames: `publish` for what a caller wrote itself (a folder, a tar written
piece by piece), `write_bytes` / `write_text` / `write_json` / `save_npy` for whole files, and
`staged_folder` / `replace_folder` for a folder that replaces an earlier one (an export).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """What identifies an input file in a manifest: its path, size and sha256."""
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path)}


def fingerprint(inputs: Any) -> str:
    """sha256 of a JSON-able value (dict keys sorted): the identity of a set of inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """sha256 over several files' bytes, in the order given (a model's weights and heads)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def texts_digest(texts: Iterable[str]) -> str:
    """sha256 of a sequence of texts (each UTF-8, NUL-terminated, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def temporary(path: str | Path) -> Path:
    """A temporary name beside `path`, unique to this process, hidden, with the same suffix
    (numpy appends .npy to names without it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def publish(tmp: str | Path, final: str | Path) -> None:
    """Rename a finished temporary file or folder into place (atomic on one file system; a
    folder's `final` must not exist or be empty)."""
    os.replace(tmp, final)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from linux/fcntl.h and linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing names in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    kernel, libc or file system cannot (NFS, macOS), and the caller falls back."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_folder(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder `tmp` where `final` is, and delete the old `final`.

    Where the two names can be exchanged at once a reader sees the old folder or the new one,
    never neither; elsewhere the old folder is first renamed aside, so for a moment `final` is
    missing (and a crash in that moment leaves the old folder at `.<name>.<pid>.old`)."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp)  # now the old folder
        return
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


@contextlib.contextmanager
def staged_folder(final: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside `final` to write into; on success it replaces `final`
    (replace_folder), on an error it is deleted and `final` is as it was. Temporary folders that
    killed processes left beside `final` are deleted first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        pid = stale.name.removeprefix(f".{final.name}.").removesuffix(".tmp")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, final)


def write_bytes(path: str | Path, data: bytes) -> None:
    tmp = temporary(path)
    try:
        tmp.write_bytes(data)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any, **dumps: Any) -> None:
    write_text(path, json.dumps(value, **dumps))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save through a temporary file (plain .npy, no pickle)."""
    tmp = temporary(path)
    try:
        np.save(tmp, array, allow_pickle=False)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
