"""Start a real `mlrec serve` process on 127.0.0.1 and wait until it answers /health."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

MLREC = str(Path(sys.executable).parent / "mlrec")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_service(export: Path, log: Path, *overrides: str) -> Iterator[httpx.Client]:
    """A client of `mlrec serve EXPORT` with these overrides; its output goes to `log`."""
    port = free_port()
    cmd = [MLREC, "serve", str(export), f"serve.port={port}", *overrides]
    with open(log, "w") as sink:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    client.server_pid = proc.pid  # for tests that watch the server's memory
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not come up in 180 s"
            time.sleep(0.3)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
