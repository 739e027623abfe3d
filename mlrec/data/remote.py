"""Shards on object storage or an HTTP store (`s3://`, `gs://`, `http(s)://`), through fsspec.

A remote shards folder is read through a local *mirror* of its small files (manifest.json,
tokenizer/, items/) in `<run_dir>/remote-shards/`: training memory-maps the item table and
loads the tokenizer from local files, exactly as from a local folder. The tars, the bulk, stay
remote: each is fetched whole when it is read (a few MB; the loader holds one shard's samples
at a time anyway, and fetches the next one meanwhile: `prefetch`), then checked as a local
tar is (size before, count after, sha256 before evaluation: mlrec.data.verify). `remote.json`
in the mirror records the URL, and mlrec.data.layout gives each ShardFile its `url` from it.

Every request is retried with exponential backoff on a transient error (a refused or reset
connection, a timeout, a 5xx); a permanent one (404, 403) fails at once. Either way the error
is one line naming the shard. `mlrec shard` with a remote `data.shards_dir` (or `--out URL`)
writes the shards locally into the mirror and uploads them, manifest last, skipping files
already there at their size, so a re-run after a preemption uploads only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mlrec import io
from mlrec.data.layout import ITEMS_DIR, MANIFEST, REMOTE_RECORD, TOKENIZER_DIR
from mlrec.data.rows import DataError

log = logging.getLogger(__name__)

ATTEMPTS = 5
BACKOFF_S = 0.2  # first wait; doubled after each failed attempt (0.2, 0.4, 0.8, 1.6 s)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}

T = TypeVar("T")


class RemoteError(DataError):
    """A remote file that cannot be read or written (after the retries, for transient errors)."""


_FILESYSTEMS: dict[tuple[int, str], Any] = {}


def filesystem(url: str) -> Any:
    """The fsspec file system of `url`, one per process (forked DataLoader workers must not
    share an event loop or a connection pool with their parent)."""
    import fsspec

    protocol = url.split("://", 1)[0]
    key = (os.getpid(), protocol)
    if key not in _FILESYSTEMS:
        try:
            _FILESYSTEMS[key] = fsspec.filesystem(protocol)
        except ImportError as err:
            package = _PACKAGES.get(protocol, protocol)
            raise RemoteError(
                f"{url}: reading {protocol}:// needs {package}: pip install 'mlrec[remote]' "
                f"(or pip install {package})"
            ) from err
    return _FILESYSTEMS[key]


def retried(what: str, call: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """`call()`, again after BACKOFF_S, 2 * BACKOFF_S, ... while it fails transiently."""
    for attempt in range(attempts):
        try:
            return call()
        except _PERMANENT:
            raise
        except Exception as err:  # noqa: BLE001 - fsspec back ends raise their own kinds
            if attempt == attempts - 1:
                raise RemoteError(
                    f"{what}: failed {attempts} times, the last with {type(err).__name__}: "
                    f"{err}".rstrip(": ")
                ) from None
            wait = BACKOFF_S * 2**attempt
            log.warning("%s: %s (%s); retrying in %.1f s", what, type(err).__name__, err, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


_LISTINGS: dict[tuple[int, str], dict[str, int]] = {}


def size(url: str) -> int:
    """The remote file's size in bytes; FileNotFoundError when it is not there. On object
    storage a folder is listed once per process: a loader checks every shard's size before
    it starts, and one request per shard (thousands) would delay every start by minutes. The
    bytes fetched are checked against the manifest again (mlrec.data.verify)."""
    if url.startswith(("http://", "https://")):
        return int(retried(url, lambda: _http_size(url)))
    folder, _, name = url.rpartition("/")
    key = (os.getpid(), folder)
    if key not in _LISTINGS:
        fs = filesystem(url)
        entries = retried(folder, lambda: fs.ls(folder, detail=True, refresh=True))
        _LISTINGS[key] = {
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
            for e in entries
            if e.get("type") == "file"
        }
    if name in _LISTINGS[key]:
        return _LISTINGS[key][name]
    return int(retried(url, lambda: filesystem(url).size(url)))  # added since the listing


# fsspec's HTTP file system reports every failed HEAD (a 503 too) as FileNotFoundError, which
# would make a busy server's shard "missing"; a HEAD of our own tells the two apart. No proxy,
# as fsspec's aiohttp session uses none.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_size(url: str) -> int:
    try:
        with _HTTP.open(urllib.request.Request(url, method="HEAD"), timeout=60) as answer:
            length = answer.headers.get("Content-Length")
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            raise FileNotFoundError(f"{url}: HTTP {err.code}") from None
        if err.code in (401, 403):
            raise PermissionError(f"{url}: HTTP {err.code}") from None
        raise  # 5xx, 429: transient, retried
    return int(length) if length is not None else len(fetch(url))


def fetch(url: str) -> bytes:
    """The remote file's bytes, in one request (retried whole); from the read-ahead when
    `prefetch` asked for it (its failure is forgotten: this call fetches again and reports)."""
    ahead = _AHEAD.pop((os.getpid(), url), None)
    if ahead is not None:
        try:
            return ahead.result()
        except Exception:  # noqa: BLE001, S110 - fetched again below, which raises it
            pass
    return retried(url, lambda: filesystem(url).cat_file(url))


# Read-ahead: the next shards of a loader fetched in threads while it reads the current one
# (network waits release the GIL), at most _AHEAD_MAX held per process.
_AHEAD: dict[tuple[int, str], Future] = {}
_AHEAD_MAX = 4
_POOLS: dict[int, ThreadPoolExecutor] = {}


def prefetch(url: str) -> None:
    key = (os.getpid(), url)
    if key in _AHEAD or len(_AHEAD) >= _AHEAD_MAX:
        return
    pool = _POOLS.get(key[0])
    if pool is None:  # one per process: a forked DataLoader worker has none of its parent's
        pool = _POOLS[key[0]] = ThreadPoolExecutor(2, thread_name_prefix="mlrec-read-ahead")
    _AHEAD[key] = pool.submit(retried, url, lambda: filesystem(url).cat_file(url))


def mirror(url: str, local: Path) -> Path:
    """The local mirror of the remote shards folder `url` (manifest, tokenizer, item table),
    fetched again when the remote manifest changed; returns `local`."""
    url = url.rstrip("/")
    try:
        manifest = fetch(f"{url}/{MANIFEST}")
    except FileNotFoundError:
        raise RemoteError(
            f"{url}/{MANIFEST} not found: write the shards there first with "
            f"`mlrec shard --config ... --out {url}`"
        ) from None
    record = local / REMOTE_RECORD
    if (
        record.is_file()
        and json.loads(record.read_text())["url"] == url
        and (local / MANIFEST).is_file()
        and (local / MANIFEST).read_bytes() == manifest
    ):
        return local
    fs = filesystem(url)
    for folder in (TOKENIZER_DIR, ITEMS_DIR):
        remote_files = retried(f"{url}/{folder}", lambda f=folder: fs.find(f"{url}/{f}"))
        if not remote_files:
            raise RemoteError(f"{url}/{folder}/ is empty or cannot be listed")
        for each in remote_files:
            name = each.rsplit(f"/{folder}/", 1)[1]
            target = local / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            io.write_bytes(target, fetch(fs.unstrip_protocol(each) if "://" not in each else each))
    io.write_bytes(local / MANIFEST, manifest)
    io.write_json(record, {"url": url})  # last: the mark of a complete mirror
    log.info("mirrored %s (manifest, tokenizer, item table) into %s", url, local)
    return local


def upload(local: Path, url: str) -> int:
    """Put every file of the shards folder `local` under `url`, manifest.json last, skipping
    files already there at the same size; returns how many were sent."""
    url = url.rstrip("/")
    if url.startswith(("http://", "https://")):
        raise RemoteError(
            f"{url}: an HTTP store is read-only to mlrec; write the shards to a local folder or "
            "s3:// and copy them there with the store's own tool"
        )
    fs = filesystem(url)
    skip = {REMOTE_RECORD, MANIFEST}
    files = [
        p
        for p in sorted(local.rglob("*"))
        if p.is_file()
        and p.name not in skip
        # locks, temporary files and folders of interrupted writes
        and not any(part.startswith(".") for part in p.relative_to(local).parts)
    ]
    sent = 0
    for path in [*files, local / MANIFEST]:
        target = f"{url}/{path.relative_to(local).as_posix()}"
        try:
            there = size(target)
        except FileNotFoundError:
            there = -1
        if there == path.stat().st_size and path.name != MANIFEST:
            continue
        retried(target, lambda p=path, t=target: fs.put_file(str(p), t))
        sent += 1
    log.info("uploaded %d files to %s (%d already there)", sent, url, len(files) + 1 - sent)
    return sent
