"""Streaming training batches from the impression shards, deterministically and resumably.

Each process (rank) and each DataLoader worker reads a disjoint slice of the shards: per epoch the
shard list is shuffled with (seed, epoch) and shard i goes to global worker i mod (ranks*workers),
which is webdataset's split_by_node followed by split_by_worker. The stream repeats epochs for
ever, so every rank yields a batch at every step and DDP never waits on a rank that ran dry.

Batches are built inside the workers. Every sub-stream is a pure function of (seed, rank, index),
and PyTorch takes an iterable dataset's batches round-robin from its workers, so the position of a
rank's loader is one number: batches consumed. Resuming re-creates the streams, rotated so that
the first worker asked continues the right one, each dropping its share of the consumed batches
(exact mid-epoch resume).

A batch holds each distinct item once (histories share items heavily): `items` are the token rows
of the distinct items, and `history` / `candidates` index into them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mlrec.data.shards import ITEM_TOKENS, load_manifest

log = logging.getLogger(__name__)


def shard_paths(shards_dir: str | Path, split: str) -> list[str]:
    manifest = load_manifest(shards_dir)
    return [str(Path(shards_dir) / s["name"]) for s in manifest["splits"][split]["shards"]]


def read_impressions(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Impression samples of the given shards, in order (no splitting: the caller chose them)."""
    dataset = wds.WebDataset(
        paths, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
    )
    for sample in dataset:
        yield json.loads(sample["json"])


def collate(
    samples: list[tuple[list[int], list[int], str]], table: np.ndarray, pad_id: int
) -> dict[str, Any]:
    """Build one batch from (history rows, candidate rows with the positive first, language)."""
    rows = sorted({r for history, cands, _ in samples for r in (*history, *cands)})
    position = {r: i for i, r in enumerate(rows)}
    tokens = table[rows]
    lengths = (tokens != pad_id).sum(axis=1)
    width = max(int(lengths.max()), 1)  # dynamic padding: only as wide as the longest item
    tokens = torch.from_numpy(tokens[:, :width].astype(np.int64))
    max_hist = max(1, max(len(h) for h, _, _ in samples))
    history = torch.zeros(len(samples), max_hist, dtype=torch.long)
    history_mask = torch.zeros(len(samples), max_hist, dtype=torch.bool)
    for b, (hist, _, _) in enumerate(samples):
        history[b, : len(hist)] = torch.tensor([position[r] for r in hist], dtype=torch.long)
        history_mask[b, : len(hist)] = True
    candidates = torch.tensor([[position[r] for r in c] for _, c, _ in samples], dtype=torch.long)
    return {
        "item_ids": tokens,
        "item_mask": tokens != pad_id,
        "history": history,
        "history_mask": history_mask,
        "candidates": candidates,
        "labels": torch.zeros(len(samples), dtype=torch.long),  # the positive is candidate 0
        "langs": [lang for _, _, lang in samples],
    }


class TrainStream(IterableDataset):
    """Endless stream of training batches for one rank; see the module docstring."""

    def __init__(
        self,
        shards_dir: str | Path,
        *,
        batch_size: int,
        negatives: int,
        max_history: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        skip_batches: int = 0,
    ) -> None:
        self.shards_dir = Path(shards_dir)
        self.paths = shard_paths(shards_dir, "train")
        self.pad_id = load_manifest(shards_dir)["tokenizer"]["pad_token_id"]
        self.batch_size = batch_size
        self.negatives = negatives
        self.max_history = max_history
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.skip_batches = skip_batches

    def _samples(self, worker: int, workers: int) -> Iterator[tuple[list[int], list[int], str]]:
        slot, slots = self.rank * workers + worker, self.world_size * workers
        if len(self.paths) < slots:
            raise ValueError(
                f"{self.shards_dir}: {len(self.paths)} train shards cannot feed {slots} readers "
                f"({self.world_size} processes x {workers} workers); lower data.shard_max_samples "
                "or data.num_workers"
            )
        rng = np.random.default_rng([self.seed, slot])
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))
            mine = [self.paths[i] for i in order[slot::slots]]
            for imp in read_impressions(mine):
                labels = imp["labels"]
                negs = [c for c, y in zip(imp["candidates"], labels, strict=True) if not y]
                if not negs:
                    continue
                history = imp["history"][-self.max_history :]
                for pos in (c for c, y in zip(imp["candidates"], labels, strict=True) if y):
                    # MIND's usual sampling: K negatives from the same impression, with
                    # replacement when it showed fewer than K.
                    picks = rng.choice(
                        len(negs), self.negatives, replace=len(negs) < self.negatives
                    )
                    yield history, [pos, *(negs[i] for i in picks)], imp["lang"]
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        table = np.load(self.shards_dir / ITEM_TOKENS, mmap_mode="r")
        # Batch k of this rank comes from sub-stream k mod workers. The DataLoader asks worker 0
        # first, so after skipping n batches worker w must produce sub-stream (w + n) mod workers,
        # having dropped that sub-stream's batches among the first n.
        stream = (worker + self.skip_batches) % workers
        to_skip = len(range(stream, self.skip_batches, workers))
        batch: list[tuple[list[int], list[int], str]] = []
        for sample in self._samples(stream, workers):
            batch.append(sample)
            if len(batch) < self.batch_size:
                continue
            if to_skip:
                to_skip -= 1
            else:
                yield collate(batch, table, self.pad_id)
            batch = []


def train_loader(
    shards_dir: str | Path,
    *,
    batch_size: int,
    negatives: int,
    max_history: int,
    seed: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    skip_batches: int = 0,
) -> DataLoader:
    """A DataLoader over `TrainStream`; do not pass it to `accelerator.prepare` (it would split
    or broadcast the stream a second time): move batches to the device yourself."""
    stream = TrainStream(
        shards_dir,
        batch_size=batch_size,
        negatives=negatives,
        max_history=max_history,
        seed=seed,
        rank=rank,
        world_size=world_size,
        skip_batches=skip_batches,
    )
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        # The workers' base seed would otherwise be drawn from the global torch RNG whenever an
        # iterator starts, shifting dropout masks after a resume; the stream needs no torch RNG.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
