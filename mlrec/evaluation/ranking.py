"""Scoring the held-out impressions, split across processes and gathered, nothing dropped.

Every process reads the dev impressions in the same order, checks that no impression id repeats
(before splitting, so the check sees them all), and scores those at positions rank, rank + world,
...; each impression's scores and metrics (or why it has none) are gathered to all ranks, so the
result is the same with one process or several. Every impression read is accounted for: scored,
or counted per reason as unscored (see mlrec.evaluation.metrics). With `out_dir` the main process
writes metrics.json there, and the scores behind it (mlrec.evaluation.predictions).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mlrec import io
from mlrec.data.layout import ITEM_TOKENS, item_index, shard_paths
from mlrec.data.loader import read_impressions
from mlrec.data.rows import DUPLICATE_IMPRESSION, DataError
from mlrec.evaluation.encode import TorchItems, encode_rows
from mlrec.evaluation.metrics import impression_metrics, summarize, unscored_reason
from mlrec.evaluation.predictions import write_predictions
from mlrec.models.recommender import Recommender

METRICS_FILE = "metrics.json"
_USERS_PER_PASS = 256


def full_parameters(accelerator: Accelerator, model: torch.nn.Module):
    """Under ZeRO-3 each process holds a slice of every weight and a forward pass gathers them
    collectively, which deadlocks or mixes slices when ranks run different numbers of passes (as
    evaluation does); gather them all once for the whole evaluation instead."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()))


def _dev_impressions(shards_dir: str | Path, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(shard name, impression) of a dev split, in the manifest's order."""
    for path in shard_paths(shards_dir, split):
        for imp in read_impressions([path]):
            yield Path(path).name, imp


def read_dev(
    shards_dir: str | Path, max_impressions: int = 0, split: str = "dev"
) -> tuple[list[dict[str, Any]], bool]:
    """The impressions of a dev set (the first `max_impressions` when set) and whether that limit
    cut any; a repeated impression id is a DataError: its metrics and predictions would merge."""
    stream = _dev_impressions(shards_dir, split)
    if max_impressions:
        # one past the limit tells whether it cut anything
        stream = itertools.islice(stream, max_impressions + 1)
    read = list(stream)
    limited = bool(max_impressions) and len(read) > max_impressions
    read = read[:max_impressions] if limited else read
    first: dict[int, str] = {}
    for shard, imp in read:
        imp_id = imp["impression"]
        if imp_id in first:
            raise DataError(
                f"{shards_dir}: impression id {imp_id} is in dev set {split!r} twice "
                f"({first[imp_id]} and {shard}); impression ids must be unique within a dev set "
                "(were two dev files with overlapping ids combined?)",
                DUPLICATE_IMPRESSION,
            )
        first[imp_id] = shard
    return [imp for _, imp in read], limited


@torch.no_grad()
def evaluate(
    model: Recommender,
    accelerator: Accelerator,
    shards_dir: str | Path,
    pad_id: int,
    *,
    batch_size: int,
    max_history: int,
    max_impressions: int = 0,
    out_dir: Path | None = None,
    split: str = "dev",
) -> dict[str, Any]:
    """MIND metrics on the shards of a dev split, per language and overall, with the accounting
    of every impression read (see mlrec.evaluation.metrics); with `out_dir`, the main process writes
    metrics.json, predictions.tsv and prediction.txt there."""
    impressions, limited = read_dev(shards_dir, max_impressions, split)
    was_training = model.training
    model.eval()
    mine = impressions[accelerator.process_index :: accelerator.num_processes]
    table = np.load(Path(shards_dir) / ITEM_TOKENS, mmap_mode="r")
    rows = sorted({r for imp in mine for r in (*imp["history"][-max_history:], *imp["candidates"])})
    position = {r: i for i, r in enumerate(rows)}
    # (impression id, language, candidate rows, scores, metrics or the reason there are none)
    results: list[tuple[int, str, list[int], np.ndarray, dict[str, float] | str]] = []
    with full_parameters(accelerator, model), accelerator.autocast():
        encoder = TorchItems(model.item_encoder, accelerator.device)
        vectors = encode_rows(encoder, table, np.asarray(rows), pad_id, batch_size)
        vectors = torch.from_numpy(vectors).to(accelerator.device)
        for start in range(0, len(mine), _USERS_PER_PASS):
            chunk = mine[start : start + _USERS_PER_PASS]
            width = max(1, max(len(imp["history"][-max_history:]) for imp in chunk))
            history = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.bool)
            for b, imp in enumerate(chunk):
                hist = [position[r] for r in imp["history"][-max_history:]]
                history[b, : len(hist)] = torch.tensor(hist, dtype=torch.long)
                mask[b, : len(hist)] = True
            users = model.user_vectors(
                vectors, history.to(accelerator.device), mask.to(accelerator.device)
            ).float()
            # The dot products in float32 even under mixed precision: half-precision scores tie
            # often, and ties are where our AUC (a tie counts half) and rank-based scorers such
            # as MIND's (prediction.txt) part ways.
            with torch.autocast(accelerator.device.type, enabled=False):
                for b, imp in enumerate(chunk):
                    cands = torch.tensor([position[r] for r in imp["candidates"]])
                    scores = (vectors[cands.to(accelerator.device)] @ users[b]).cpu().numpy()
                    reason = unscored_reason(imp["labels"])
                    outcome = reason or impression_metrics(imp["labels"], scores.tolist())
                    assert outcome is not None  # scorable exactly when there is no reason
                    results.append(
                        (imp["impression"], imp["lang"], imp["candidates"], scores, outcome)
                    )
    gathered = gather_object(results) if accelerator.num_processes > 1 else results
    model.train(was_training)
    # ids are unique (read_dev), so sorting by id gives one order whatever the process count
    gathered = sorted(gathered, key=lambda r: r[0])
    metrics = summarize(
        ((lang, o) for _, lang, _, _, o in gathered if isinstance(o, dict)),
        ((lang, o) for _, lang, _, _, o in gathered if isinstance(o, str)),
    )
    if limited:
        metrics["limited_to"] = max_impressions
    if out_dir is not None and accelerator.is_main_process:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        keys = [row[0] for row in item_index(shards_dir)]
        write_predictions(out_dir, [(i, c, s) for i, _, c, s, _ in gathered], keys)
        # last: a metrics.json beside predictions means they are of the same evaluation
        io.write_json(out_dir / METRICS_FILE, metrics, indent=2)
    return metrics
