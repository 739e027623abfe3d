"""Files: content hashes, fingerprints of inputs, and atomic writes.

Every file mlrec publishes (shards, item tables, checkpoints, manifests, vectors, caches) is
written under a temporary name in the same folder and then renamed into place, so a reader or a
re-run after a crash sees either the old file or the whole new one, never half of one. This module
is the one place that renames: `publish` for what a caller wrote itself (a folder, a tar written
piece by piece), `write_bytes` / `write_text` / `write_json` / `save_npy` for whole files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
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
