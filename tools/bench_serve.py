"""Load test of the ranking service: a real `mlrec serve` on 127.0.0.1 and concurrent clients.

    python -m tools.bench_serve --out FILE.json [--quick] [--clients 32] [--seconds 60] [--items N]

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

Catalog scale (the same run): `--items` (1,000,000; 200,000 with --quick) random 256-d vectors
in 1,000 Gaussian clusters (centres N(0, 1), items centre + N(0, 0.75^2) per dimension; users
drawn alike), so that neighbours exist and ANN is not searching noise. It measures the build
time and memory of an HNSW and an IVF-PQ index (mlrec.serve.ann, as `mlrec export` builds
them), then recall@10 against exact search and queries/s, one query at a time as the service
searches, over a sweep of ef / nprobe, beside exact search by numpy (one query at a time, and
batched as a matrix product). `ann_recall@10` and `ann_speedup` are the fastest index setting
whose recall@10 is at least 0.95, against exact one-at-a-time search. Then it swaps that catalog
into an export of the small student (its vectors saved with their metadata, the chosen index
per language and for all), starts `mlrec serve` on it and loads /recommend (20 history ids,
k = 10) with 1, 8 and 32 clients: `p99_ms_32`, `errors_32`. Random vectors make the latency and
recall figures real and the recommendations meaningless.
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


CLUSTERS, SPREAD, DIM, K = 1_000, 0.75, 256, 10
LANGUAGES = ("ar", "de", "en", "es", "fr", "ja", "ru", "zh")


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):  # in blocks: float64 noise for 1M rows is 2 GB
        size = min(100_000, n - start)
        noise = rng.standard_normal((size, centres.shape[1]), dtype=np.float32)
        out[start : start + size] = centres[rng.integers(0, len(centres), size)] + SPREAD * noise
    return out


def exact_search(vectors: np.ndarray, users: np.ndarray) -> dict:
    """Ground truth, and exact search's speed one query at a time and batched."""
    start = time.perf_counter()
    truth = [np.argpartition(-(vectors @ u), K - 1)[:K] for u in users]
    single = len(users) / (time.perf_counter() - start)
    start = time.perf_counter()
    for first in range(0, len(users), 32):
        scores = users[first : first + 32] @ vectors.T
        np.argpartition(-scores, K - 1, axis=1)[:, :K]
    batched = len(users) / (time.perf_counter() - start)
    return {"truth": truth, "queries_per_s": single, "batched_queries_per_s": batched}


def sweep(indexes, vectors, users, truth, points: list[dict]) -> list[dict]:
    from mlrec.serve import ann

    out = []
    for point in points:
        indexes.params["rerank"] = point.get("rerank", 1)
        start = time.perf_counter()
        found = [
            ann.top(indexes, vectors, u, ann.ALL, K, point.get("nprobe", 1), point.get("ef", 1))[0]
            for u in users
        ]
        qps = len(users) / (time.perf_counter() - start)
        recall = np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth, strict=True)])
        out.append({**point, "recall@10": float(recall), "queries_per_s": qps})
        print("  ", indexes.kind, json.dumps(out[-1]), flush=True)
    return out


def build_index(kind: str, vectors: np.ndarray, languages: np.ndarray, folder: Path) -> tuple:
    """The all-languages index of this kind (mlrec.serve.ann), its build time and memory."""
    import faiss

    from mlrec.config import load_config
    from mlrec.serve import ann

    cfg = load_config(None, [f"export.index.kind={kind}"]).export.index
    params = ann.resolved_params(cfg, *vectors.shape)
    before = rss_mb(os.getpid())
    start = time.perf_counter()
    index = ann.build(vectors, params)
    seconds = time.perf_counter() - start
    grown = rss_mb(os.getpid()) - before
    path = folder / f"{kind}.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size / 2**20
    path.unlink()
    # a copy: the sweep sets the rerank of each of its points on the live parameters
    figures = {"params": dict(params), "build_s": seconds, "rss_growth_mb": grown, "file_mb": size}
    print(kind, json.dumps(figures), flush=True)
    return ann.Indexes(params, {ann.ALL: index}, languages), figures


# At 1M items (M 32, ef_construction 40) HNSW reached recall@10 0.92 at ef 256, and IVF-PQ's
# recall did not move with nprobe beyond 16 but with the rerank depth (0.53 at 10, 0.83 at 30):
# the sweeps go on to where both pass 0.95.
HNSW_POINTS = [{"ef": ef} for ef in (32, 64, 128, 256, 512, 1024)]
IVFPQ_POINTS = [
    {"nprobe": nprobe, "rerank": rerank}
    for nprobe, rerank in ((16, 10), (16, 30), (16, 100), (32, 100), (32, 300), (64, 300))
]


def catalog_scale(items: int, queries: int, folder: Path) -> tuple[dict, dict]:
    """Exact vs HNSW vs IVF-PQ on clustered random vectors; returns the figures and what the
    HTTP part needs (vectors, languages, the chosen index)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    vectors = clustered(items, rng, centres)
    users = clustered(queries, rng, centres)
    languages = np.asarray(LANGUAGES)[rng.integers(0, len(LANGUAGES), items)]
    exact = exact_search(vectors, users)
    figures: dict = {"vectors": f"{items} x {DIM} random, {CLUSTERS} Gaussian clusters"}
    candidates, indexes_of = [], {}
    for kind, points in (("hnsw", HNSW_POINTS), ("ivfpq", IVFPQ_POINTS)):
        indexes, built = build_index(kind, vectors, languages, folder)
        indexes_of[kind] = indexes
        built["points"] = sweep(indexes, vectors, users, exact["truth"], points)
        figures[kind] = built
        candidates += [(p, kind, indexes) for p in built["points"] if p["recall@10"] >= 0.95]
    again = exact_search(vectors, users)  # exact once more: the machine's load drifts
    exact_qps = float(np.median([exact["queries_per_s"], again["queries_per_s"]]))
    batched = float(np.median([exact["batched_queries_per_s"], again["batched_queries_per_s"]]))
    figures["exact"] = {"queries_per_s": exact_qps, "batched_queries_per_s": batched}
    best = max(candidates, key=lambda c: c[0]["queries_per_s"], default=None)
    if best is None:  # no setting met the goal: ann_* stay null; serve the most accurate one
        every = [(p, k, i) for k, i in indexes_of.items() for p in figures[k]["points"]]
        best = max(every, key=lambda c: c[0]["recall@10"])
    point, kind, indexes = best
    figures["best"] = {"kind": kind, **point, "meets_recall_0.95": point["recall@10"] >= 0.95}
    if point["recall@10"] >= 0.95:
        figures["ann_speedup"] = point["queries_per_s"] / exact_qps
        figures["ann_speedup_vs_batched_exact"] = point["queries_per_s"] / batched
        figures["ann_recall@10"] = point["recall@10"]
    return figures, {"vectors": vectors, "languages": languages, "best": best}


def catalog_export(export: Path, chosen: dict, backend: str) -> list[str]:
    """Swap the random catalog into `export` as `mlrec export` would leave it: index.tsv,
    (dummy) tokens, the vectors with their metadata, and the chosen index per language and for
    all. Returns the serve.* overrides that select it."""
    from mlrec.config import load_config
    from mlrec.serve import ann
    from mlrec.serve.vectors import save_vectors

    vectors, languages = chosen["vectors"], chosen["languages"]
    point, kind, indexes = chosen["best"]
    catalog = export / "catalog"
    lines = (f"R{row}@{lang}\t{lang}\tnews\tnews\n" for row, lang in enumerate(languages))
    (catalog / "index.tsv").write_text("".join(lines), encoding="utf-8")
    np.save(catalog / "tokens.npy", np.zeros((len(vectors), 2), dtype=np.int32))
    vectors_file = save_vectors(export, backend, vectors)
    cfg = load_config(None, [f"export.index.kind={kind}"]).export.index
    built = dict(indexes.indexes)
    for lang in LANGUAGES:  # each with the parameters `mlrec export` gives its size
        rows = vectors[languages == lang]
        built[lang] = ann.build(rows, ann.resolved_params(cfg, *rows.shape))
    indexes.params["rerank"] = point.get("rerank", 1)
    ann.Indexes(indexes.params, built, languages).save(ann.index_dir(export, backend), vectors_file)
    overrides = [f"export.index.kind={kind}", f"export.index.rerank={indexes.params['rerank']}"]
    overrides += [
        f"serve.nprobe={point.get('nprobe', 16)}",
        f"serve.ef_search={point.get('ef', 64)}",
    ]
    return overrides


def recommend_load(export: Path, overrides: list[str], seconds: float, items: int) -> dict:
    port = free_port()
    log = export.parent / "serve-catalog.log"
    proc = start_service(export, port, log, *overrides)
    base = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(1)
    index = (export / "catalog" / "index.tsv").read_text().splitlines()
    ids = [line.split("\t")[0] for line in index]
    requests = [
        ("/recommend", {"users": [{"history": rng.choice(ids, 20).tolist(), "k": K}]})
        for _ in range(64)
    ]
    results: dict = {}
    try:
        wait_until_up(proc, base, log, timeout=900)
        for clients in (1, 8, 32):
            with MemoryWatch(proc.pid) as memory:
                results[str(clients)] = load(base, requests, clients, seconds)
            results[str(clients)]["server_rss_mb"] = {"before": memory.before, "peak": memory.peak}
            row = results[str(clients)]
            print(
                f"/recommend, {clients} clients:", json.dumps({k: row[k] for k in list(row)[:11]})
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(ids) == items
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--quick", action="store_true", help="small model, 15 s per scenario")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=None, help="per scenario")
    parser.add_argument("--items", type=int, default=None, help="catalog scale (1M; quick 200k)")
    parser.add_argument("overrides", nargs="*", help="serve.* overrides, e.g. serve.threads=2")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    seconds = args.seconds or (15 if args.quick else 60)
    items = args.items or (200_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        export = build(Path(tmp) / "run", args.quick)
        results = run(export, Path(tmp) / "run" / "corpus", args.clients, seconds, args.overrides)
        scale, chosen = catalog_scale(items, 200 if args.quick else 300, Path(tmp))
        # the student's export (256-d, as the random vectors): the quick run's export already is
        small = export if args.quick else build(Path(tmp) / "small", True)
        overrides = catalog_export(small, chosen, "onnx-int8")
        del chosen
        recommend = recommend_load(small, overrides + args.overrides, seconds, items)
    out = {
        "items": items,
        "ann_speedup": scale.get("ann_speedup"),
        "ann_recall@10": scale.get("ann_recall@10"),
        "ann_speedup_vs_batched_exact": scale.get("ann_speedup_vs_batched_exact"),
        "p99_ms_32": recommend["32"]["p99_ms"],
        "errors_32": recommend["32"]["errors_http"] + recommend["32"]["errors_transport"],
        **{
            f"recommend_{key}_{clients}": recommend[clients][key]
            for clients in recommend
            for key in ("requests_per_s", "p50_ms", "p99_ms", "shed_503")
        },
        "catalog_scale": scale,
        "recommend": recommend,
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
    skip = ("scenarios", "catalog_scale", "recommend")
    print(json.dumps({k: v for k, v in out.items() if k not in skip}, indent=2))


if __name__ == "__main__":
    main()
