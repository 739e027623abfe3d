"""Load test of the ranking service: a real `mlrec serve` on 127.0.0.1 and concurrent clients.

    python -m tools.bench_serve --out FILE.json [--quick] [--clients 32] [--seconds 60]

Builds an untrained export of multilingual MiniLM-L12's shape (the `small` student's with
--quick) from the synthetic corpus (tools.bench_export.build_export, in a child process), starts
`mlrec serve` on it (ONNX int8), and runs each scenario for a fixed time with `--clients`
threads, each on its own keep-alive connection:
  - `rank`: /rank from ids alone, 50 history items and 100 candidates;
  - `mix`: 80% /rank as above, 20% /embed of 8 real titles from the corpus.
Per scenario it writes requests, answers by status, transport errors, shed load (503s),
requests/s, latency p50/p99/max (overall and per endpoint) and the server's resident memory
before, after and at its peak (sampled every 0.1 s from /proc). The baseline is the same
service under one client, measured in the same run: what concurrency costs in latency.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(export: Path, port: int, log: Path, *overrides: str) -> subprocess.Popen:
    """`mlrec serve` of the export on `port` (ONNX int8 unless overridden), output to `log`."""
    mlrec = str(Path(sys.executable).parent / "mlrec")
    cmd = [mlrec, "serve", str(export), f"serve.port={port}", "serve.backend=onnx-int8"]
    with open(log, "w") as sink:
        return subprocess.Popen([*cmd, *overrides], stdout=sink, stderr=subprocess.STDOUT)


def wait_until_up(proc: subprocess.Popen, base: str, log: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start in {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MemoryWatch:
    """The peak resident memory of a process, sampled in a thread while the block runs."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.peak = self.before = self.after = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> MemoryWatch:
        self.before = self.peak = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_mb(self.pid)
        self.peak = max(self.peak, self.after)


Request = tuple[str, dict]  # (path, JSON body)


def load(base: str, requests: list[Request], clients: int, seconds: float, seed: int = 0) -> dict:
    """`clients` threads post requests drawn from `requests` for `seconds`; per-call records."""
    import httpx

    records: list[tuple[str, int | str, float]] = []  # (path, status or error, seconds)
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = random.Random(seed + index)
        mine = []
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.monotonic() < stop_at:
                path, body = rng.choice(requests)
                start = time.perf_counter()
                try:
                    status: int | str = http.post(path, json=body).status_code
                except httpx.TransportError as err:
                    status = type(err).__name__
                mine.append((path, status, time.perf_counter() - start))
        with lock:
            records.extend(mine)

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return summarise(records, time.perf_counter() - start, clients)


def _latency(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = 1000 * np.asarray(seconds)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def summarise(records: list, elapsed: float, clients: int) -> dict:
    statuses = Counter(str(status) for _, status, _ in records)
    ok = [s for _, status, s in records if status == 200]
    per_path = {
        path: {
            "requests": sum(1 for p, _, _ in records if p == path),
            **_latency([s for p, status, s in records if p == path and status == 200]),
        }
        for path in sorted({p for p, _, _ in records})
    }
    transport = sum(n for status, n in statuses.items() if not status.isdigit())
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(records),
        "ok": len(ok),
        "shed_503": statuses.get("503", 0),
        "errors_http": sum(
            n for status, n in statuses.items() if status.isdigit() and status not in ("200", "503")
        ),
        "errors_transport": transport,
        "statuses": dict(statuses),
        "requests_per_s": len(ok) / elapsed,
        **_latency(ok),
        "by_endpoint": per_path,
    }


def scenarios(export: Path, corpus: Path, seed: int = 0) -> dict[str, list[Request]]:
    ids = [line.split("\t")[0] for line in (export / "catalog" / "index.tsv").open()]
    titles = [
        line.split("\t")[3]
        for news in sorted((corpus / "news").glob("*.tsv"))
        for line in news.open(encoding="utf-8")
    ]
    rng = np.random.default_rng(seed)
    rank = [
        (
            "/rank",
            {
                "history": rng.choice(ids, 50, replace=False).tolist(),
                "candidates": rng.choice(ids, 100, replace=False).tolist(),
            },
        )
        for _ in range(64)
    ]
    embed = [
        ("/embed", {"texts": rng.choice(titles, 8, replace=False).tolist()}) for _ in range(16)
    ]
    # 80 /rank to 20 /embed: the mix is drawn uniformly from these 80 + 20 requests
    return {"rank": rank, "mix": rank[:64] + rank[:16] + embed + embed[:4]}


def build(root: Path, quick: bool) -> Path:
    from tools.bench_export import SHAPES, build_export

    shape = SHAPES["small" if quick else "minilm"]
    # in a child process, as a serving host does not build its models either
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        export, _ = pool.submit(build_export, root, shape).result()
    return export


def run(export: Path, corpus: Path, clients: int, seconds: float, overrides: list[str]) -> dict:
    port = free_port()
    log = export.parent / "serve.log"
    proc = start_service(export, port, log, *overrides)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, base, log)
        results: dict = {}
        for name, requests in scenarios(export, corpus).items():
            single = load(base, requests, 1, min(seconds, 10))  # the baseline: one client
            with MemoryWatch(proc.pid) as memory:
                loaded = load(base, requests, clients, seconds)
            loaded["server_rss_mb"] = {
                "before": memory.before,
                "peak": memory.peak,
                "after": memory.after,
            }
            loaded["one_client"] = single
            results[name] = loaded
            print(name, json.dumps({k: loaded[k] for k in list(loaded)[:12]}), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--quick", action="store_true", help="small model, 15 s per scenario")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=None, help="per scenario")
    parser.add_argument("overrides", nargs="*", help="serve.* overrides, e.g. serve.threads=2")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    seconds = args.seconds or (15 if args.quick else 60)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        export = build(Path(tmp) / "run", args.quick)
        results = run(export, Path(tmp) / "run" / "corpus", args.clients, seconds, args.overrides)
    out = {
        "quick": args.quick,
        "model": "small student (256 x 4)" if args.quick else "MiniLM-L12 shape (384 x 12)",
        "backend": "onnx-int8",
        "overrides": args.overrides,
        "cpus": os.cpu_count(),
        "seconds_per_scenario": seconds,
        **{
            f"{name}_{key}": results[name][key]
            for name in results
            for key in ("requests_per_s", "p50_ms", "p99_ms", "errors_http", "errors_transport")
        },
        "scenarios": results,
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "scenarios"}, indent=2))


if __name__ == "__main__":
    main()
