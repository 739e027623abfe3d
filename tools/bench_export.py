"""Benchmark the exported encoders on CPU: torch fp32 vs ONNX fp32 vs ONNX int8, and the service.

    python -m tools.bench_export --out FILE.json [--quick]

Builds two untrained encoders from config (no hub) and, for each, shards the synthetic corpus and
exports it the way `mlrec export` does (Hugging Face, ONNX fp32 + int8, the parity check):
  - `minilm`: the shape of multilingual MiniLM-L12 (hidden 384, 12 layers, 12 heads, FFN 1536),
    the small multilingual encoder serving teams most often deploy: the headline figures;
  - `small`: a smaller student (hidden 256, 4 layers), where int8 gains less because its matrix
    products are too small to dominate the time (normalisation, softmax, GELU stay fp32).
Then it measures:
  - item encoding at batch sizes 1 and 32: items/s and p50/p99 latency per variant. Variants run
    in alternating rounds (a different one first each round) and each figure is the median over
    rounds, because other work on the machine moves single measurements a lot;
  - the ranking service (`mlrec serve`, ONNX int8) on 127.0.0.1: /rank from 4 concurrent
    clients for a fixed time (tools.bench_serve holds the load client and the full load test).
Every figure goes into the JSON, with `onnx_int8_speedup_bs32` and `int8_cosine_min` on top.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "debug" / "tiny.yaml"
COMMON = ["model.vocab_size=8000", "data.max_item_tokens=32"]
SHAPES = {  # the first is the headline
    "minilm": [
        "model.hidden_size=384",
        "model.num_layers=12",
        "model.num_heads=12",
        "model.intermediate_size=1536",
        "model.user_heads=12",
        *COMMON,
    ],
    "small": [
        "model.hidden_size=256",
        "model.num_layers=4",
        "model.num_heads=4",
        "model.intermediate_size=1024",
        "model.user_heads=4",
        *COMMON,
    ],
}
VARIANTS = ("torch_fp32", "onnx_fp32", "onnx_int8")
BACKEND_OF = {"torch_fp32": "torch", "onnx_fp32": "onnx", "onnx_int8": "onnx-int8"}


def build_export(root: Path, shape: list[str]) -> tuple[Path, dict]:
    """Shards, an untrained encoder of this shape, and its full export (parity included)."""
    from mlrec.config import load_config
    from mlrec.data.layout import TOKENIZER_DIR, load_manifest
    from mlrec.data.shards import ShardInputs, build_shards
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.export.hf import export_model
    from mlrec.export.onnx_models import export_onnx
    from mlrec.export.parity import check_parity
    from mlrec.models.recommender import build_recommender

    cfg = load_config(TINY, [f"run_dir={root}", *shape])
    build_shards(ShardInputs.of(cfg), progress=False)
    tokenizer = load_tokenizer(cfg.shards_dir / TOKENIZER_DIR)
    pad_id = load_manifest(cfg.shards_dir)["tokenizer"]["pad_token_id"]
    model = build_recommender(cfg.model, len(tokenizer), pad_id).eval()
    export = export_model(model, tokenizer, cfg, root / "export")
    export_onnx(export)
    return export, check_parity(export, cfg.shards_dir, cfg.export.parity_impressions)


def batches(export: Path, batch_size: int, count: int, seed: int) -> list[tuple]:
    """Batches of real catalog titles (token rows), each cut to its longest item."""
    from mlrec.data.tokenizer import load_tokenizer

    table = np.load(export / "catalog" / "tokens.npy")
    pad_id = load_tokenizer(export).pad_token_id
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        tokens = table[rng.choice(len(table), batch_size, replace=False)]
        width = max(int((tokens != pad_id).sum(axis=1).max()), 1)
        ids = tokens[:, :width].astype(np.int64)
        out.append((ids, (ids != pad_id).astype(np.int64)))
    return out


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def bench_encoders(export: Path, rounds: int, calls: dict[int, int]) -> dict:
    from mlrec.export.backends import load_backend

    threads = os.cpu_count() or 1
    backends = {v: load_backend(export, BACKEND_OF[v], threads) for v in VARIANTS}
    results: dict = {}
    for batch_size, n in calls.items():
        data = batches(export, batch_size, n, seed=batch_size)
        for backend in backends.values():  # warm-up: first calls allocate and pick kernels
            backend.items(*data[0])
        per_round = {v: {"items_per_s": [], "p50_ms": [], "p99_ms": []} for v in VARIANTS}
        for r in range(rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for variant in order:
                latencies = []
                start = time.perf_counter()
                for ids, mask in data:
                    t = time.perf_counter()
                    backends[variant].items(ids, mask)
                    latencies.append(time.perf_counter() - t)
                elapsed = time.perf_counter() - start
                per_round[variant]["items_per_s"].append(batch_size * n / elapsed)
                per_round[variant]["p50_ms"].append(1000 * float(np.percentile(latencies, 50)))
                per_round[variant]["p99_ms"].append(1000 * float(np.percentile(latencies, 99)))
        for variant, series in per_round.items():
            results.setdefault(variant, {})[f"bs{batch_size}"] = {
                key: float(np.median(values)) for key, values in series.items()
            }
        reference = backends["torch_fp32"].items(*data[0])
        for variant in ("onnx_fp32", "onnx_int8"):
            results[variant][f"bs{batch_size}"]["cosine_min_vs_torch"] = cosine_min(
                backends[variant].items(*data[0]), reference
            )
    results["threads"] = threads
    return results


def rank_bodies(export: Path, count: int = 64) -> list[tuple[str, dict]]:
    """/rank requests of random catalog items: 10 history items and 20 candidates each."""
    ids = [line.split("\t")[0] for line in (export / "catalog" / "index.tsv").open()]
    rng = np.random.default_rng(0)
    return [
        (
            "/rank",
            {
                "history": rng.choice(ids, 10, replace=False).tolist(),
                "candidates": rng.choice(ids, 20, replace=False).tolist(),
            },
        )
        for _ in range(count)
    ]


def bench_service(export: Path, seconds: float, clients: int) -> dict:
    """/rank on 127.0.0.1 from a few clients for `seconds` (tools.bench_serve's load client;
    `python -m tools.bench_serve` is the full load test, with /embed and 32 clients)."""
    from tools.bench_serve import free_port, load, start_service, wait_until_up

    port = free_port()
    log = export.parent / "serve.log"
    proc = start_service(export, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, base, log)
        figures = load(base, rank_bodies(export), clients, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "backend": "onnx-int8",
        "endpoint": "/rank (10 history items, 20 candidates)",
        **{k: figures[k] for k in ("clients", "requests", "seconds", "requests_per_s")},
        "errors": figures["errors_http"] + figures["errors_transport"] + figures["shed_503"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
    }


def summarise(shape: list[str], export_s: float, encoders: dict, parity: dict) -> dict:
    """One shape's figures: speedups over torch fp32, the worst int8 cosine, and the raw runs."""
    int8_cos = min(
        parity["int8"]["item_cosine_min"],
        parity["int8"]["user_cosine_min"],
        encoders["onnx_int8"]["bs1"]["cosine_min_vs_torch"],
        encoders["onnx_int8"]["bs32"]["cosine_min_vs_torch"],
    )
    speedup = {
        f"{variant}_speedup_bs{bs}": encoders[variant][f"bs{bs}"]["items_per_s"]
        / encoders["torch_fp32"][f"bs{bs}"]["items_per_s"]
        for variant in ("onnx_int8", "onnx_fp32")
        for bs in (32, 1)
    }
    return {
        **speedup,
        "int8_cosine_min": int8_cos,
        "goal_int8_2x_at_parity": speedup["onnx_int8_speedup_bs32"] >= 2 and parity["passed"],
        "model": {k.split("=")[0]: k.split("=")[1] for k in shape},
        "export_seconds": export_s,
        "encoders": encoders,
        "parity": parity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rounds = 5 if args.quick else 15
    calls = {1: 30, 32: 6} if args.quick else {1: 100, 32: 20}
    shapes: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name, shape in SHAPES.items():
            started = time.perf_counter()
            # Built in a child process: tracing and quantizing leave this process in a state
            # (torch's compile and thread pools) that slowed ONNX Runtime here by a quarter;
            # a serving process does not build its models either.
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                export, parity = pool.submit(build_export, Path(tmp) / name, shape).result()
            export_s = time.perf_counter() - started
            encoders = bench_encoders(export, rounds, calls)
            shapes[name] = summarise(shape, export_s, encoders, parity)
            print(
                name, json.dumps({k: shapes[name][k] for k in list(shapes[name])[:6]}), flush=True
            )
            if name == next(iter(SHAPES)):
                service = bench_service(export, 20 if args.quick else 60, clients=4)
    head = shapes[next(iter(SHAPES))]
    result = {
        "onnx_int8_speedup_bs32": head["onnx_int8_speedup_bs32"],
        "int8_cosine_min": min(s["int8_cosine_min"] for s in shapes.values()),
        "goal_int8_2x_at_parity": head["goal_int8_2x_at_parity"],
        "headline_shape": next(iter(SHAPES)),
        "quick": args.quick,
        "rounds": rounds,
        "calls_per_round": {f"bs{bs}": n for bs, n in calls.items()},
        "shapes": shapes,
        "service": service,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in list(result)[:4]}, indent=2))
    print(f"service: {service['requests_per_s']:.1f} requests/s; all figures in {args.out}")


if __name__ == "__main__":
    main()
