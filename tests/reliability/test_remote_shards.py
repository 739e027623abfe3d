"""Shards on object storage and HTTP, against servers these tests start on 127.0.0.1: moto's
S3 server (through s3fs) and `python -m http.server`. Sharding uploads and a re-run skips what is
there; reading gives the local samples; training killed with -9 and resumed gives the losses and
evaluation of an uninterrupted run on local shards; transient errors are retried, a permanent
one names the shard."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlrec.data import remote
from mlrec.data.layout import shard_files
from mlrec.data.loader import read_impressions
from mlrec.data.verify import ShardError, verify_folder
from tests.conftest import tiny_config
from tests.reliability.test_interruptions import (
    losses,
    mlrec_train,
    start_run_train,
    wait_for_step,
)

BUCKET = "mlrec-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, with the environment s3fs (and our subprocesses) use."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _wait_for(port, proc)
    keys = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    remote._FILESYSTEMS.clear()
    remote.filesystem("s3://").mkdir(BUCKET)
    yield f"s3://{BUCKET}"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    remote._FILESYSTEMS.clear()
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tiny_shards):
    """`python -m http.server` on 127.0.0.1 serving the tiny shards folder."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tiny_shards,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def _samples(shards_dir: Path, split: str) -> list[dict]:
    return list(read_impressions(shard_files(shards_dir, split)))


def test_shard_to_s3_rerun_skips_and_reads_back_alike(s3, tiny_shards, tmp_path):
    from mlrec import pipeline

    url = f"{s3}/tiny"
    cfg = tiny_config(tmp_path / "writer", f"data.shards_dir={url}")
    pipeline.shard(cfg)
    assert cfg.shards_dir == tmp_path / "writer" / "remote-shards"  # written here, then sent
    assert remote.upload(cfg.shards_dir, url) == 1  # a re-run sends the manifest only
    reader = tiny_config(tmp_path / "reader", f"data.shards_dir={url}")
    pipeline.remote_shards(reader)
    for split in ("train", "dev"):
        assert all(s.url.startswith(f"{url}/") for s in shard_files(reader.shards_dir, split))
        assert _samples(reader.shards_dir, split) == _samples(tiny_shards, split)
    problems: list[str] = []
    assert verify_folder(reader.shards_dir, problems.append).endswith(": ok")
    # a tar cut short on the store: every read names it (the URL), and --verify lists it
    victim = shard_files(reader.shards_dir, "train")[1]
    fs = remote.filesystem(url)
    fs.pipe_file(victim.url, remote.fetch(victim.url)[:-1024])
    with pytest.raises(ShardError, match=f"{victim.url}: .* bytes, but the manifest records"):
        _samples(reader.shards_dir, "train")
    with pytest.raises(ShardError):
        verify_folder(reader.shards_dir, problems.append)
    assert [p for p in problems if victim.url in p]


def test_slices_to_s3_upload_only_once_every_part_is_there(s3, tiny_shards, tmp_path):
    """The cluster steps (items, slices, merge) with an s3:// output: the merge of an
    unfinished job refuses and sends nothing; once every slice is there it uploads, manifest
    last; a second merge sends only the manifest again."""
    from mlrec import pipeline

    url = f"{s3}/sliced"
    cfg = tiny_config(tmp_path / "run", f"data.shards_dir={url}")
    pipeline.shard(cfg, step="items")
    pipeline.shard(cfg, part=(0, 2))
    with pytest.raises(FileNotFoundError, match="run the missing `mlrec shard --slice"):
        pipeline.shard(cfg, step="merge")
    fs = remote.filesystem(url)
    assert not fs.exists(f"{url}/manifest.json") and not fs.exists(f"{url}/tokenizer")
    pipeline.shard(cfg, part=(1, 2))
    pipeline.shard(cfg, step="merge")
    reader = tiny_config(tmp_path / "reader", f"data.shards_dir={url}")
    pipeline.remote_shards(reader)
    assert _samples(reader.shards_dir, "train") == _samples(tiny_shards, "train")
    assert remote.upload(cfg.shards_dir, url) == 1


def test_http_shards_read_like_local_and_a_missing_one_is_named(served, tiny_shards, tmp_path):
    from mlrec import pipeline

    cfg = tiny_config(tmp_path, f"data.shards_dir={served}")
    pipeline.remote_shards(cfg)
    assert _samples(cfg.shards_dir, "dev") == _samples(tiny_shards, "dev")
    gone = shard_files(cfg.shards_dir, "dev")[0]
    (tmp_path / "elsewhere").mkdir()
    local = tiny_shards / gone.path.name
    os.rename(local, tmp_path / "elsewhere" / local.name)
    try:
        start = time.monotonic()
        with pytest.raises(ShardError, match=f"{gone.url}: missing"):
            _samples(cfg.shards_dir, "dev")
        assert time.monotonic() - start < remote.BACKOFF_S  # a 404 is not retried
    finally:
        os.rename(tmp_path / "elsewhere" / local.name, local)


class _Flaky(http.server.SimpleHTTPRequestHandler):
    """Answers 503 to the first `failures` requests for each tar, then serves it."""

    failures = 2
    seen: dict[str, int] = {}

    def _fail(self) -> bool:
        if not self.path.endswith(".tar"):
            return False
        count = self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if count > self.failures:
            return False
        self.send_error(503, "try again")
        return True

    def do_GET(self):  # noqa: N802 - http.server's name
        if not self._fail():
            super().do_GET()

    def do_HEAD(self):  # noqa: N802
        if not self._fail():
            super().do_HEAD()

    def log_message(self, *args):
        pass


def test_transient_errors_are_retried_and_lasting_ones_named(tiny_shards, tmp_path, monkeypatch):
    from mlrec import pipeline

    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    handler = lambda *a, **k: _Flaky(*a, directory=str(tiny_shards), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = tiny_config(tmp_path, f"data.shards_dir=http://127.0.0.1:{server.server_port}")
        pipeline.remote_shards(cfg)
        assert _samples(cfg.shards_dir, "dev") == _samples(tiny_shards, "dev")  # 503, 503, ok
        _Flaky.failures = remote.ATTEMPTS * 10
        _Flaky.seen.clear()
        first = shard_files(cfg.shards_dir, "dev")[0]
        with pytest.raises(ShardError, match=f"{first.url}: .*failed {remote.ATTEMPTS} times"):
            _samples(cfg.shards_dir, "dev")
    finally:
        server.shutdown()
        _Flaky.failures = 2


@pytest.fixture(scope="module")
def straight_local(tiny_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight-local")
    out = mlrec_train(run, tiny_shards)
    assert out.returncode == 0, out.stderr[-4000:]
    return run


@pytest.mark.parametrize("store", ["s3", "http"])
def test_training_from_remote_shards_resumes_exactly_after_kill_9(
    store, request, tiny_shards, straight_local, tmp_path
):
    if store == "s3":
        url = f"{request.getfixturevalue('s3')}/resume"
        remote.upload(tiny_shards, url)
    else:
        url = request.getfixturevalue("served")
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_run_train(run, url, log)
    wait_for_step(proc, log, 5)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    out = mlrec_train(run, url, "train.resume=latest")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from" in out.stderr
    mirror = run / "remote-shards"  # the small files only: the tars were read from the store
    assert (mirror / "remote.json").is_file() and not list(mirror.glob("*.tar"))
    assert losses(run) == losses(straight_local)
    assert (run / "eval" / "metrics.json").read_text() == (
        straight_local / "eval" / "metrics.json"
    ).read_text()
