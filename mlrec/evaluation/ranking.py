"""Scoring the held-out impressions, split across processes and gathered without duplicates.

Every process reads the dev impressions in the same order and scores those at positions
rank, rank + world, ...; per-impression metrics are gathered to all ranks and keyed by
impression id, so the result is the same with one process or several.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mlrec.data.layout import ITEM_TOKENS, shard_paths
from mlrec.data.loader import read_impressions
from mlrec.evaluation.encode import TorchItems, encode_rows
from mlrec.evaluation.metrics import impression_metrics, summarize
from mlrec.models.recommender import Recommender

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
) -> dict[str, Any]:
    """MIND metrics on the dev shards, per language and overall (see mlrec.evaluation.metrics)."""
    was_training = model.training
    model.eval()
    impressions = list(read_impressions(shard_paths(shards_dir, "dev")))
    if max_impressions:
        impressions = impressions[:max_impressions]
    mine = impressions[accelerator.process_index :: accelerator.num_processes]
    table = np.load(Path(shards_dir) / ITEM_TOKENS, mmap_mode="r")
    rows = sorted({r for imp in mine for r in (*imp["history"][-max_history:], *imp["candidates"])})
    position = {r: i for i, r in enumerate(rows)}
    with full_parameters(accelerator, model), accelerator.autocast():
        encoder = TorchItems(model.item_encoder, accelerator.device)
        vectors = encode_rows(encoder, table, np.asarray(rows), pad_id, batch_size)
        vectors = torch.from_numpy(vectors).to(accelerator.device)
        records = []
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
            for b, imp in enumerate(chunk):
                cands = torch.tensor([position[r] for r in imp["candidates"]])
                scores = (vectors[cands.to(accelerator.device)] @ users[b]).cpu().tolist()
                metrics = impression_metrics(imp["labels"], scores)
                if metrics is not None:
                    records.append((imp["impression"], imp["lang"], metrics))
    gathered = gather_object(records) if accelerator.num_processes > 1 else records
    unique = {imp_id: (lang, metrics) for imp_id, lang, metrics in gathered}
    model.train(was_training)
    return summarize(unique[k] for k in sorted(unique))
