"""Streaming training batches from the impression shards, deterministically and resumably.

Each process (rank) and each DataLoader worker owns a *slot*, and the slots own disjoint parts of
every language: a language with at least as many shards as slots deals its shards to the slots
(a seeded shuffle, then shard i to slot i mod slots, as webdataset's split_by_node followed by
split_by_worker would); a smaller language is split by sample (the slot takes every slots-th
sample), so no slot sits idle. Each epoch re-shuffles the order of a slot's shards and of the
samples inside each shard (one shard in memory at a time).

Language sampling with temperature alpha (XLM-R's): a slot works in rounds of as many impressions
as it owns; in a round it takes m_lang = round(n_lang ** alpha / sum(n ** alpha) * n) impressions
of each language, in a seeded random order, each language's stream cycling through its epochs. At
alpha = 1, m_lang = n_lang: round r is exactly epoch r of the slot's data, so the slots together
read every impression once per round. At alpha < 1 small languages repeat and large ones are
spread over several rounds. The stream repeats rounds for ever, so every rank yields a batch at
every step and DDP never waits on a rank that ran dry.

Batches are built inside the workers. Every sub-stream is a pure function of (seed, slot, shards),
and PyTorch takes an iterable dataset's batches round-robin from its workers, so the position of a
rank's loader is one number: batches consumed. Resuming re-creates the streams, rotated so that
the first worker asked continues the right one, each dropping its share of the consumed batches
(exact mid-epoch resume; the dropped batches are re-read, not re-tokenised).

A batch holds each distinct item once (histories share items heavily): `items` are the token rows
of the distinct items, and `history` / `candidates` index into them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mlrec.data.layout import ITEM_FEATURES, ITEM_TOKENS, ShardFile, language_shards, load_manifest
from mlrec.data.verify import check_size, read_shard

log = logging.getLogger(__name__)


def round_sizes(owned: dict[str, int], alpha: float) -> dict[str, int]:
    """Impressions per language in one round of n = sum(owned): n * n_lang^a / sum(n^a),
    rounded by largest remainder so they sum to n (at alpha = 1 they equal `owned`)."""
    langs = [lang for lang, n in owned.items() if n]
    counts = np.array([owned[lang] for lang in langs], dtype=np.float64)
    exact = counts**alpha / (counts**alpha).sum() * counts.sum()
    sizes = np.floor(exact).astype(np.int64)
    short = int(counts.sum()) - int(sizes.sum())
    sizes[np.argsort(-(exact - sizes), kind="stable")[:short]] += 1
    return dict(zip(langs, sizes.tolist(), strict=True))


def read_impressions(shards: Iterable[ShardFile]) -> Iterator[dict[str, Any]]:
    """Impression samples of the given shards, in order (no splitting: the caller chose them),
    each shard checked against its manifest entry (size, and the count once read to its end)."""
    for shard in shards:
        yield from read_shard(shard)


Sample = tuple[list[int], list[int], str, int]  # history rows, candidate rows, language, impression


def collate(
    samples: list[Sample], table: np.ndarray, pad_id: int, features: np.ndarray | None = None
) -> dict[str, Any]:
    """Build one batch from (history rows, candidate rows with the positive first, language,
    impression id); with `features` (items/features.npy), the items' teacher vectors too."""
    rows = sorted({r for history, cands, _, _ in samples for r in (*history, *cands)})
    position = {r: i for i, r in enumerate(rows)}
    tokens = table[rows]
    lengths = (tokens != pad_id).sum(axis=1)
    width = max(int(lengths.max()), 1)  # dynamic padding: only as wide as the longest item
    tokens = torch.from_numpy(tokens[:, :width].astype(np.int64))
    max_hist = max(1, max(len(h) for h, _, _, _ in samples))
    history = torch.zeros(len(samples), max_hist, dtype=torch.long)
    history_mask = torch.zeros(len(samples), max_hist, dtype=torch.bool)
    for b, (hist, _, _, _) in enumerate(samples):
        history[b, : len(hist)] = torch.tensor([position[r] for r in hist], dtype=torch.long)
        history_mask[b, : len(hist)] = True
    candidates = torch.tensor([[position[r] for r in c] for _, c, _, _ in samples])
    extra = {}
    if features is not None:
        extra["item_features"] = torch.from_numpy(np.asarray(features[rows], dtype=np.float32))
    return {
        **extra,
        "item_ids": tokens,
        "item_mask": tokens != pad_id,
        "history": history,
        "history_mask": history_mask,
        "candidates": candidates,
        "labels": torch.zeros(len(samples), dtype=torch.long),  # the positive is candidate 0
        "langs": [lang for _, _, lang, _ in samples],
        "impressions": [imp for _, _, _, imp in samples],
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
        language_alpha: float = 1.0,
        features: bool = False,
    ) -> None:
        self.shards_dir = Path(shards_dir)
        self.features = features  # batches carry items/features.npy's rows (checked by caller)
        self.shards = language_shards(shards_dir, "train")
        # every tar before any worker starts: a missing or cut shard stops training here, not
        # in a worker mid-run (each read checks again, and counts)
        for shards in self.shards.values():
            for shard in shards:
                check_size(shard)
        self.pad_id = load_manifest(shards_dir)["tokenizer"]["pad_token_id"]
        self.batch_size = batch_size
        self.negatives = negatives
        self.max_history = max_history
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.skip_batches = skip_batches
        self.language_alpha = language_alpha

    def _mine(self, lang: str, slot: int, slots: int) -> tuple[list[ShardFile], bool, int]:
        """A slot's shards of one language, whether it splits them by shard, and its count."""
        shards = self.shards[lang]
        if len(shards) >= slots:
            lang_id = list(self.shards).index(lang)
            deal = np.random.default_rng([self.seed, lang_id]).permutation(len(shards))
            mine = [shards[i] for i in deal[slot::slots]]
            return mine, True, sum(s.samples for s in mine)
        total = sum(s.samples for s in shards)
        return shards, False, len(range(slot, total, slots))

    def owned(self, worker: int, workers: int) -> dict[str, int]:
        """Impressions per language that one slot owns (its share of an epoch)."""
        slot, slots = self.rank * workers + worker, self.world_size * workers
        return {lang: self._mine(lang, slot, slots)[2] for lang in self.shards}

    def _language_stream(self, lang: str, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        """One language's impressions for one slot, epoch after epoch."""
        shards, by_shard, _ = self._mine(lang, slot, slots)
        lang_id = list(self.shards).index(lang)
        epoch = 0
        while True:
            # The same generator in every slot: a split by sample needs one common order.
            rng = np.random.default_rng([self.seed, lang_id, epoch])
            position = 0
            for i in rng.permutation(len(shards)):
                samples = list(read_impressions([shards[i]]))
                for j in rng.permutation(len(samples)):
                    if by_shard or position % slots == slot:
                        yield samples[j]
                    position += 1
            epoch += 1

    def impressions(
        self, worker: int, workers: int, rng: np.random.Generator
    ) -> Iterator[dict[str, Any]]:
        """The impressions of one slot, round after round (see the module docstring)."""
        slot, slots = self.rank * workers + worker, self.world_size * workers
        owned = self.owned(worker, workers)
        if not sum(owned.values()):
            raise ValueError(
                f"{self.shards_dir}: too few train impressions for {slots} readers "
                f"({self.world_size} processes x {workers} workers); lower data.num_workers"
            )
        sizes = round_sizes(owned, self.language_alpha)
        streams = {lang: self._language_stream(lang, slot, slots) for lang in sizes}
        schedule = np.repeat(list(sizes), list(sizes.values()))
        while True:
            for lang in rng.permutation(schedule):
                yield next(streams[lang])

    def _samples(self, worker: int, workers: int) -> Iterator[Sample]:
        rng = np.random.default_rng([self.seed, self.rank * workers + worker])
        for imp in self.impressions(worker, workers, rng):
            labels = imp["labels"]
            negs = [c for c, y in zip(imp["candidates"], labels, strict=True) if not y]
            if not negs:
                continue
            history = imp["history"][-self.max_history :]
            for pos in (c for c, y in zip(imp["candidates"], labels, strict=True) if y):
                # MIND's usual sampling: K negatives from the same impression, with
                # replacement when it showed fewer than K.
                picks = rng.choice(len(negs), self.negatives, replace=len(negs) < self.negatives)
                yield history, [pos, *(negs[i] for i in picks)], imp["lang"], imp["impression"]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        table = np.load(self.shards_dir / ITEM_TOKENS, mmap_mode="r")
        features = None
        if self.features:
            features = np.load(self.shards_dir / ITEM_FEATURES, mmap_mode="r")
        # Batch k of this rank comes from sub-stream k mod workers. The DataLoader asks worker 0
        # first, so after skipping n batches worker w must produce sub-stream (w + n) mod workers,
        # having dropped that sub-stream's batches among the first n.
        stream = (worker + self.skip_batches) % workers
        to_skip = len(range(stream, self.skip_batches, workers))
        batch: list[Sample] = []
        for sample in self._samples(stream, workers):
            batch.append(sample)
            if len(batch) < self.batch_size:
                continue
            if to_skip:
                to_skip -= 1
            else:
                yield collate(batch, table, self.pad_id, features)
            batch = []


def train_loader(shards_dir: str | Path, *, num_workers: int, **options: Any) -> DataLoader:
    """A DataLoader over `TrainStream(shards_dir, **options)`; do not pass it to
    `accelerator.prepare` (it would split or broadcast the stream a second time): move batches
    to the device yourself."""
    stream = TrainStream(shards_dir, **options)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        # The workers' base seed would otherwise be drawn from the global torch RNG whenever an
        # iterator starts, shifting dropout masks after a resume; the stream needs no torch RNG.
        generator=torch.Generator().manual_seed(stream.seed),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
