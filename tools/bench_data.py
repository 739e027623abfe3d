"""Data-stage benchmark: shards + streaming loader vs tokenising the TSVs on the fly, the loader
vs what a training step consumes, sharding throughput and peak memory at 1x and 10x corpus (from
MIND TSV, and from a Parquet click log through data.source: table), and the loader reading the
same shards from local disk, a local HTTP server and a local S3 (moto).

    python -m tools.bench_data --out FILE.json [--quick]

Full: the 10x corpus has 1M train impressions (and is the one the loaders read), the Parquet
click logs 1M and 10M clicks; --quick is 10x smaller. Loader and naive baseline, and the local
and remote loaders, are measured alternately in the same run, 3 times each, and medians
reported (another busy process skews a lone measurement). The remote runs need mlrec[remote]
and moto[server] (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from mlrec.config import Config, load_config
from mlrec.data.loader import train_loader
from mlrec.data.mind import read_news
from mlrec.data.synthetic import generate_corpus

REPO = Path(__file__).resolve().parents[1]

# Peak memory of the child itself: VmHWM, the high-water mark of its own address space.
# resource.getrusage(RUSAGE_SELF).ru_maxrss, used before, keeps the parent's peak across the
# fork and exec that start the child (measured: 811 MB reported for a child of 11 MB whose
# parent held 800 MB), so it had reported the benchmark process, not sharding.
PEAK = """
def peak_rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
"""

SHARD_CHILD = (
    PEAK
    + """
import json, sys, time
from mlrec.config import load_config
from mlrec.data.shards import ShardInputs, build_shards
cfg = load_config(None, sys.argv[1:])
start = time.perf_counter()
manifest = build_shards(ShardInputs.of(cfg), progress=False)  # for a table: conversion first
print(json.dumps({"seconds": time.perf_counter() - start,
                  "impressions": sum(s["rows"] for s in manifest["splits"].values()),
                  "peak_rss_mb": peak_rss_mb()}))
"""
)


class NaiveDataset(torch.utils.data.Dataset):
    """What a competent user writes without shards: news pre-loaded into a dict, behaviors lines
    in memory, and each __getitem__ parses a line and tokenises its items (HF fast tokenizer,
    padded to max_length)."""

    def __init__(self, corpus: Path, tokenizer, cfg: Config) -> None:
        self.text = {
            f"{item.nid}@{item.lang}": item.title
            for path in sorted((corpus / "news").glob("*.tsv"))
            for item in read_news(path, path.stem)
        }
        self.lines = (corpus / "train" / "behaviors.tsv").read_text(encoding="utf-8").splitlines()
        self.tok, self.cfg = tokenizer, cfg.data

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        _, _, _, history, impressions = self.lines[i].split("\t")
        ref = lambda t: t if "@" in t else f"{t}@en"  # noqa: E731
        shown = [t.rpartition("-") for t in impressions.split()]
        pos = [ref(r) for r, _, y in shown if y == "1"][:1] or [ref(shown[0][0])]
        negs = [ref(r) for r, _, y in shown if y == "0"] or pos
        cands = pos + random.choices(negs, k=self.cfg.negatives)
        hist = [ref(t) for t in history.split()][-self.cfg.max_history :] or pos
        enc = lambda refs: self.tok(  # noqa: E731
            [self.text[r] for r in refs],
            padding="max_length",
            truncation=True,
            max_length=self.cfg.max_item_tokens,
            return_tensors="pt",
        )
        h, c = enc(hist), enc(cands)
        pad = self.cfg.max_history - len(hist)
        return {
            "history": torch.nn.functional.pad(h["input_ids"], (0, 0, 0, pad), value=1),
            "history_mask": torch.arange(self.cfg.max_history) < len(hist),
            "candidates": c["input_ids"],
            "candidate_mask": c["attention_mask"],
        }


def samples_per_s(batches, n_batches: int, batch_size: int) -> float:
    it = iter(batches)
    next(it)  # worker start-up and first reads are not throughput
    start = time.perf_counter()
    for _ in islice(it, n_batches):
        pass
    return n_batches * batch_size / (time.perf_counter() - start)


def shard_in_child(overrides: list[str]) -> dict:
    """Sharding with these config overrides in a fresh process (SHARD_CHILD), so its peak
    memory is its own: its figures, with impressions/s."""
    done = subprocess.run(
        [sys.executable, "-c", SHARD_CHILD, *overrides],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["impressions_per_s"] = result["impressions"] / result["seconds"]
    return result


def shard_run(corpus: Path, out: Path, tokenizer: Path) -> dict:
    return shard_in_child(
        [
            f"run_dir={out}",
            "data.source=mind",
            f"data.dir={corpus}",
            "data.news={}",
            f"model.tokenizer={tokenizer}",
        ]
    )


def train_step_seconds(shards: Path, batch: dict, repeats: int) -> float:
    """A real training step of the quickstart model (LoRA, defaults) on one loader batch."""
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.models.adapters import adapt_backbone
    from mlrec.models.recommender import build_recommender

    cfg = Config()
    tok = load_tokenizer(shards / "tokenizer")
    model = build_recommender(cfg.model, len(tok), tok.pad_token_id)
    model.item_encoder.backbone = adapt_backbone(model.item_encoder.backbone, cfg.adapter, 100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        scores = model(
            batch["item_ids"],
            batch["item_mask"],
            batch["history"],
            batch["history_mask"],
            batch["candidates"],
        )
        torch.nn.functional.cross_entropy(scores, batch["labels"]).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def generate_corpora(work: Path, base: int) -> tuple[dict[int, Path], dict[str, float]]:
    """The 1x and 10x synthetic corpora (made unless `work` holds them already), and the
    seconds each took."""
    corpora, seconds = {}, {}
    for scale in (1, 10):
        corpus = work / f"corpus_{scale}x"
        start = time.perf_counter()
        if not (corpus / "corpus.json").is_file():
            generate_corpus(
                corpus,
                num_news=1500 * scale,
                num_users=base // 10 * scale,
                train_impressions=base * scale,
                dev_impressions=base // 10 * scale,
            )
        seconds[f"generate_{scale}x_s"] = time.perf_counter() - start
        corpora[scale] = corpus
    return corpora, seconds


def train_tokenizer(work: Path, corpus: Path) -> Path:
    """One tokenizer for both sizes: the benchmark measures sharding, not tokenizer training."""
    from mlrec.data.shards import ShardInputs, item_table

    cfg = load_config(None, [f"run_dir={work / 'tok'}", "data.source=mind", f"data.dir={corpus}"])
    item_table(ShardInputs.of(cfg), progress=False)
    return cfg.shards_dir / "tokenizer"


def bench_sharding(work: Path, corpora: dict[int, Path], tokenizer: Path) -> dict:
    """Sharding time and peak memory of each corpus, each in a fresh process."""
    results = {}
    for scale in (1, 10):
        run = shard_run(corpora[scale], work / f"shards_{scale}x", tokenizer)
        results[f"shard_{scale}x"] = run
        print(f"sharding {scale}x: {run}", flush=True)
    results["shard_peak_rss_ratio_10x"] = (
        results["shard_10x"]["peak_rss_mb"] / results["shard_1x"]["peak_rss_mb"]
    )
    return results


def write_click_log(corpus: Path, out: Path, clicks: int) -> Path:
    """An item table (the corpus' news, all languages) and a click log of `clicks` rows in
    Parquet: users reading in their own language, items uniform, times increasing."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    items: dict[str, list] = {"item_id": [], "language": [], "title": [], "category": []}
    for path in sorted((corpus / "news").glob("*.tsv")):
        for item in read_news(path, path.stem):
            values = (item.nid, item.lang, item.title, item.category)
            for key, value in zip(items, values, strict=True):
                items[key].append(value)
    pq.write_table(pa.table(items), out / "items.parquet")
    languages = sorted(set(items["language"]))
    nids = np.array(sorted(set(items["item_id"])))
    rng = np.random.default_rng(0)
    users = rng.integers(0, max(clicks // 20, 10), clicks)
    table = pa.table(
        {
            "user_id": pa.array(np.char.add("U", users.astype(str))),
            "time": np.arange(clicks, dtype=np.int64),
            "item_id": pa.array(nids[rng.integers(0, len(nids), clicks)]),
            "item_language": pa.array(np.array(languages)[users % len(languages)]),
        }
    )
    pq.write_table(table, out / "clicks.parquet", row_group_size=1 << 20)
    return out


def bench_parquet_sharding(work: Path, corpus: Path, tokenizer: Path, base: int) -> dict:
    """Parquet click logs of `base` and 10 * `base` clicks converted and sharded, each in a
    fresh process: seconds, impressions/s and peak memory."""
    results = {}
    for scale in (1, 10):
        tables = work / f"parquet_{scale}x"
        if not (tables / "clicks.parquet").is_file():
            write_click_log(corpus, tables, base * scale)
        run = shard_in_child(
            [
                f"run_dir={work / f'parquet_shards_{scale}x'}",
                "data.source=table",
                f"data.table.items={tables / 'items.parquet'}",
                f"data.table.interactions={tables / 'clicks.parquet'}",
                "data.table.columns.item_language=item_language",
                "data.table.columns.category=category",
                f"model.tokenizer={tokenizer}",
            ]
        )
        run["clicks"] = base * scale
        results[f"parquet_shard_{scale}x"] = run
        print(f"parquet sharding {scale}x: {run}", flush=True)
    results["parquet_shard_peak_rss_ratio_10x"] = (
        results["parquet_shard_10x"]["peak_rss_mb"] / results["parquet_shard_1x"]["peak_rss_mb"]
    )
    results["parquet_shard_impressions_per_s"] = results["parquet_shard_10x"]["impressions_per_s"]
    return results


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(cmd: list[str], port: int, cwd: Path | None = None) -> subprocess.Popen:
    import socket

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[2]} did not start on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def bench_remote(work: Path, shards: Path, n: int) -> dict:
    """Loader samples/s (2 workers) from the same shards on local disk, through
    `python -m http.server` and through moto's S3 server, all on 127.0.0.1."""
    import os

    from mlrec.data import remote

    http_port, s3_port = _port(), _port()
    servers = [
        _serve([sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
               http_port, cwd=shards),
        _serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
               s3_port),
    ]  # fmt: skip
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
    )
    try:
        remote.filesystem("s3://").mkdir("bench")
        start = time.perf_counter()
        remote.upload(shards, "s3://bench/shards")
        upload_s = time.perf_counter() - start
        folders = {
            "local": shards,
            "http": remote.mirror(f"http://127.0.0.1:{http_port}", work / "mirror_http"),
            "s3": remote.mirror("s3://bench/shards", work / "mirror_s3"),
        }
        cfg = Config()
        runs: dict[str, list[float]] = {name: [] for name in folders}
        for _ in range(3):  # alternate, as for the loaders above
            for name, folder in folders.items():
                loader = train_loader(folder, num_workers=2, **loader_settings(cfg))
                runs[name].append(samples_per_s(loader, n, cfg.data.batch_size))
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "loader_samples_per_s_local": medians["local"],
        "loader_samples_per_s_http": medians["http"],
        "loader_samples_per_s_s3": medians["s3"],
        "remote_http_vs_local": medians["http"] / medians["local"],
        "remote_s3_vs_local": medians["s3"] / medians["local"],
        "s3_upload_s": upload_s,
        "remote_runs": runs,
    }


def loader_settings(cfg: Config) -> dict:
    """train_loader's arguments besides the shards and the workers: the quickstart's."""
    return dict(
        batch_size=cfg.data.batch_size,
        negatives=cfg.data.negatives,
        max_history=cfg.data.max_history,
        seed=0,
    )


def bench_loaders(shards: Path, corpus: Path, tokenizer: Path, n: int) -> dict:
    """Samples/s of the loader (0 and 2 workers) and of NaiveDataset over `n` batches."""
    from transformers import AutoTokenizer

    cfg = Config()
    bs = cfg.data.batch_size
    loader_kw = loader_settings(cfg)
    naive = NaiveDataset(corpus, AutoTokenizer.from_pretrained(str(tokenizer)), cfg)
    loader0, loader2, naive0 = [], [], []
    for _ in range(3):  # alternate so that load on the machine hits both alike
        loader0.append(samples_per_s(train_loader(shards, num_workers=0, **loader_kw), n, bs))
        naive_loader = torch.utils.data.DataLoader(naive, batch_size=bs, shuffle=True)
        naive0.append(samples_per_s(naive_loader, max(n // 5, 5), bs))
        loader2.append(samples_per_s(train_loader(shards, num_workers=2, **loader_kw), n, bs))
    results = dict(
        loader_samples_per_s_0_workers=statistics.median(loader0),
        loader_samples_per_s_2_workers=statistics.median(loader2),
        naive_samples_per_s_0_workers=statistics.median(naive0),
        runs={"loader_0": loader0, "loader_2": loader2, "naive_0": naive0},
    )
    results["loader_speedup_vs_naive"] = (
        results["loader_samples_per_s_0_workers"] / results["naive_samples_per_s_0_workers"]
    )
    return results


def bench_consumption(shards: Path, loader_samples_per_s: float) -> dict:
    """A training step's time on one loader batch, and the loader's rate against its need."""
    cfg = Config()
    bs = cfg.data.batch_size
    batch = next(iter(train_loader(shards, num_workers=0, **loader_settings(cfg))))
    step = train_step_seconds(shards, batch, repeats=5)
    return {
        "train_step_s": step,
        "train_samples_per_s": bs / step,
        "loader_vs_train_consumption": loader_samples_per_s / (bs / step),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep corpora and shards here")
    args = parser.parse_args()
    base = 10_000 if args.quick else 100_000  # train impressions of the 1x corpus
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data_"))
    results: dict = {"quick": args.quick, "workdir": str(work)}
    corpora, seconds = generate_corpora(work, base)
    results.update(seconds)
    tokenizer = train_tokenizer(work, corpora[1])
    results.update(bench_sharding(work, corpora, tokenizer))
    scale = 1 if args.quick else 10  # the corpus the loaders read
    shards = work / f"shards_{scale}x" / "shards"
    results["loader_corpus_train_impressions"] = base * scale
    results.update(bench_loaders(shards, corpora[scale], tokenizer, n=30 if args.quick else 100))
    results.update(bench_consumption(shards, results["loader_samples_per_s_2_workers"]))
    results["shard_impressions_per_s"] = results["shard_10x"]["impressions_per_s"]  # MIND TSV
    clicks = 100_000 if args.quick else 1_000_000  # the 1x Parquet click log
    results.update(bench_parquet_sharding(work, corpora[1], tokenizer, clicks))
    results.update(bench_remote(work, shards, n=30 if args.quick else 100))
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
