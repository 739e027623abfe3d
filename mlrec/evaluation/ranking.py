"""Scoring the held-out impressions of every dev set, split across processes and gathered,
nothing dropped; the baselines and the transfer report on exactly the same impressions.

Every process reads a dev set's impressions in the same order, checks that no impression id
repeats (before splitting, so the check sees them all), and scores those at positions rank,
rank + world, ...; each impression's scores and metrics (or why it has none) are gathered to all
ranks, so the result is the same with one process or several. Every impression read is accounted
for: scored, or counted per reason as unscored (see mlrec.evaluation.metrics).

metrics.json, for one dev set (the usual case):
  {"overall": {...}, "by_language": {lang: {...}}, "spread": {...},
   "baselines": {name: {"overall": ..., "by_language": ...}},        # same impressions
   "transfer": {"reference_language": L, "model": {lang: {...}}, name: {...}}}   # if asked
and with several dev sets the same per set under "dev_sets": {name: {...}}, with "overall" and
"by_language" over all of them. The scores go beside it (mlrec.evaluation.predictions), in a
folder per set when there are several.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mlrec import io
from mlrec.data.layout import (
    ITEM_TOKENS,
    dev_set_name,
    dev_splits,
    item_index,
    load_manifest,
    shard_files,
)
from mlrec.data.loader import read_impressions
from mlrec.data.rows import DUPLICATE_IMPRESSION, DataError
from mlrec.data.verify import check_hashes
from mlrec.evaluation.encode import TorchItems, encode_rows
from mlrec.evaluation.metrics import impression_metrics, summarize, unscored_reason
from mlrec.evaluation.predictions import write_predictions
from mlrec.evaluation.transfer import Swapper, paired, spread, transfer_table
from mlrec.models.recommender import Recommender

METRICS_FILE = "metrics.json"
Impression = dict[str, Any]
# scores of a list of impressions, one array per impression (candidate order)
BatchScorer = Callable[[Sequence[Impression]], list[np.ndarray]]
# (impression id, language, candidate rows, scores, metrics or the reason there are none)
Outcome = tuple[int, str, list[int], np.ndarray, "dict[str, float] | str"]
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
    for shard in shard_files(shards_dir, split):
        for imp in read_impressions([shard]):
            yield shard.path.name, imp


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


@dataclass
class ModelScorer:
    """The recommender as a BatchScorer: the impressions' items encoded once (each distinct row
    once), users from their last `max_history` clicks, dot products in float32 even under mixed
    precision (half-precision scores tie often, and ties are where our AUC, a tie counting half,
    and rank-based scorers such as MIND's prediction.txt part ways)."""

    model: Recommender
    accelerator: Accelerator
    table: np.ndarray  # the item table (items/tokens.npy), memory-mapped
    pad_id: int
    batch_size: int
    max_history: int
    features: np.ndarray | None = None  # the items' teacher vectors (teacher-feature tower)

    def __call__(self, impressions: Sequence[Impression]) -> list[np.ndarray]:
        device, last = self.accelerator.device, self.max_history
        rows = sorted(
            {r for imp in impressions for r in (*imp["history"][-last:], *imp["candidates"])}
        )
        position = {r: i for i, r in enumerate(rows)}
        out: list[np.ndarray] = []
        with self.accelerator.autocast():
            encoder = TorchItems(self.model.item_encoder, device)
            found = encode_rows(
                encoder, self.table, np.asarray(rows), self.pad_id, self.batch_size, self.features
            )
            vectors = torch.from_numpy(found).to(device)
            for start in range(0, len(impressions), _USERS_PER_PASS):
                chunk = impressions[start : start + _USERS_PER_PASS]
                width = max(1, max(len(imp["history"][-last:]) for imp in chunk))
                history = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.bool)
                for b, imp in enumerate(chunk):
                    hist = [position[r] for r in imp["history"][-last:]]
                    history[b, : len(hist)] = torch.tensor(hist, dtype=torch.long)
                    mask[b, : len(hist)] = True
                users = self.model.user_vectors(vectors, history.to(device), mask.to(device))
                with torch.autocast(device.type, enabled=False):
                    users = users.float()
                    for b, imp in enumerate(chunk):
                        cands = torch.tensor([position[r] for r in imp["candidates"]])
                        out.append((vectors[cands.to(device)] @ users[b]).cpu().numpy())
        return out


def per_impression(scores: Callable[[Impression], Sequence[float]]) -> BatchScorer:
    """A baseline's one-impression scorer (mlrec.evaluation.baselines) as a BatchScorer."""
    return lambda impressions: [np.asarray(scores(imp), dtype=np.float64) for imp in impressions]


def outcomes(
    impressions: Sequence[Impression], scorer: BatchScorer, accelerator: Accelerator
) -> list[Outcome]:
    """Each impression scored (this process its share), gathered, in impression-id order (ids
    are unique within a dev set, so the order is the same whatever the process count)."""
    mine = impressions[accelerator.process_index :: accelerator.num_processes]
    results = []
    for imp, scores in zip(mine, scorer(mine), strict=True):
        reason = unscored_reason(imp["labels"])
        outcome = reason or impression_metrics(imp["labels"], scores.tolist())
        results.append((imp["impression"], imp["lang"], imp["candidates"], scores, outcome))
    gathered = gather_object(results) if accelerator.num_processes > 1 else results
    return sorted(gathered, key=lambda r: r[0])


def summary(results: Sequence[Outcome]) -> dict[str, Any]:
    return summarize(
        ((lang, o) for _, lang, _, _, o in results if isinstance(o, dict)),
        ((lang, o) for _, lang, _, _, o in results if isinstance(o, str)),
    )


def _transfer(
    impressions: Sequence[Impression],
    scorers: dict[str, BatchScorer],
    swapper: Swapper,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """The transfer report of one dev set, for the model and each baseline."""
    targets, references, missing = paired(impressions, swapper)
    report: dict[str, Any] = {"reference_language": swapper.reference, "unpaired": missing}
    if not targets:
        return report
    for name, scorer in scorers.items():
        target = summary(outcomes(targets, scorer, accelerator))
        reference = summary(outcomes(references, scorer, accelerator))
        report[name] = transfer_table(target, reference, missing)
    return report


def source_rows(shards_dir: str | Path, split: str) -> dict[str, Any]:
    """The behaviors file a dev set was sharded from, and its row accounting there: rows read,
    kept, and skipped by reason (data.on_error=skip), so a skip made at shard time is stated in
    metrics.json too, never only in a manifest nobody reads."""
    manifest = load_manifest(shards_dir)
    path = manifest["splits"][split]["source"]["path"]
    counts = manifest["rows"]["files"].get(path, {})
    return {"path": path, **{k: counts[k] for k in ("rows", "kept", "skipped") if k in counts}}


def evaluate_split(
    split: str,
    shards_dir: str | Path,
    scorers: dict[str, BatchScorer],
    accelerator: Accelerator,
    *,
    max_impressions: int = 0,
    swapper: Swapper | None = None,
) -> tuple[dict[str, Any], list[Outcome]]:
    """One dev set: the metrics of every scorer ("model" first) on the same impressions, and
    the model's outcomes (for the prediction files)."""
    impressions, limited = read_dev(shards_dir, max_impressions, split)
    model, *baselines = scorers
    results = outcomes(impressions, scorers[model], accelerator)
    metrics = summary(results)
    metrics["spread"] = spread(metrics["by_language"])
    metrics["source"] = source_rows(shards_dir, split)
    if limited:
        metrics["limited_to"] = max_impressions
    if baselines:
        scored = {name: outcomes(impressions, scorers[name], accelerator) for name in baselines}
        metrics["baselines"] = {name: summary(rows) for name, rows in scored.items()}
        if PAIRED_AGAINST in scored:
            scored["model"] = results
            users = {imp["impression"]: imp["user"] for imp in impressions}
            metrics["paired"] = paired_against(scored, PAIRED_AGAINST, users=users)
    if swapper is not None:
        metrics["transfer"] = _transfer(impressions, scorers, swapper, accelerator)
    return metrics, results


PAIRED_AGAINST = "teacher_late_fusion"  # the bar: a frozen teacher, no training


def paired_against(
    scored: dict[str, list[Outcome]],
    against: str,
    metric: str = "auc",
    users: dict[int, str] | None = None,
) -> dict:
    """Each scorer's per-impression `metric` minus `against`'s on the same impressions, per
    language and overall: the mean difference, its standard error (sd / sqrt(n): the two
    scores of an impression are not independent, so the paired error is the honest one, far
    smaller than the two unpaired errors together) and n. With `users` (impression id -> user),
    also `se_by_user`, the cluster-robust error with each user's impressions as one cluster:
    impressions of one user (or of one basket) are not independent of each other either, and
    when a user has many, the plain error understates the uncertainty."""
    base = scored[against]
    out: dict[str, Any] = {"against": against, "metric": metric}
    for name, rows in scored.items():
        if name == against:
            continue
        diffs: dict[str, list[tuple[float, str]]] = {}
        for mine, theirs in zip(rows, base, strict=True):
            if mine[0] != theirs[0]:
                raise ValueError(f"{name} and {against} scored different impressions")
            if isinstance(mine[4], dict) and isinstance(theirs[4], dict):
                diff = (mine[4][metric] - theirs[4][metric], (users or {}).get(mine[0], ""))
                diffs.setdefault(mine[1], []).append(diff)
                diffs.setdefault("overall", []).append(diff)
        out[name] = {
            lang: _mean_and_error(d, clustered=users is not None)
            for lang, d in sorted(diffs.items())
        }
    return out


def _mean_and_error(diffs: list[tuple[float, str]], clustered: bool) -> dict[str, float]:
    values = np.asarray([d for d, _ in diffs], dtype=np.float64)
    n = len(values)
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    out = {"n": n, "diff": float(values.mean()), "se": se}
    if clustered:
        # sum of residuals per cluster; the CR1 small-sample factor G / (G - 1)
        sums: dict[str, float] = {}
        for (_, user), residual in zip(diffs, values - values.mean(), strict=True):
            sums[user] = sums.get(user, 0.0) + residual
        groups = len(sums)
        spread = sum(v * v for v in sums.values()) * groups / (groups - 1) if groups > 1 else 0
        out["users"] = groups
        out["se_by_user"] = float(np.sqrt(spread) / n) if groups > 1 else float("nan")
    return out


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
    baselines: dict[str, BatchScorer] | None = None,
    reference_language: str = "",
    features: np.ndarray | None = None,
) -> dict[str, Any]:
    """MIND metrics of the model (and each baseline) on every dev set of the shards, per
    language and overall, with the accounting of every impression read and, with
    `reference_language`, the transfer report; with `out_dir`, the main process writes
    metrics.json and the scores behind it there (see the module docstring)."""
    splits = dev_splits(shards_dir)
    # every dev byte before scoring: a changed one keeps a shard's size and count, so the
    # checks of each read pass it, and it would be scored as data (dev is small beside train)
    for split in splits:
        check_hashes(shard_files(shards_dir, split))
    was_training = model.training
    model.eval()
    table = np.load(Path(shards_dir) / ITEM_TOKENS, mmap_mode="r")
    scorers = {
        "model": ModelScorer(model, accelerator, table, pad_id, batch_size, max_history, features),
        **(baselines or {}),
    }
    keys = [row[0] for row in item_index(shards_dir)]
    swapper = Swapper(keys, reference_language) if reference_language else None
    if swapper is not None and not any(row is not None for row in swapper.swap):
        raise ValueError(f"eval.reference_language={reference_language!r}: no item has it")
    per_set, everything = {}, []
    with full_parameters(accelerator, model):
        for split in splits:
            metrics, results = evaluate_split(
                split, shards_dir, scorers, accelerator,
                max_impressions=max_impressions, swapper=swapper,
            )  # fmt: skip
            per_set[dev_set_name(split)] = metrics
            everything += results
            if out_dir is not None and accelerator.is_main_process:
                where = Path(out_dir) if len(splits) == 1 else Path(out_dir) / dev_set_name(split)
                where.mkdir(parents=True, exist_ok=True)
                write_predictions(where, [(i, c, s) for i, _, c, s, _ in results], keys)
    model.train(was_training)
    if len(splits) == 1:
        metrics = per_set[dev_set_name(splits[0])]
    else:
        metrics = {**summary(everything), "dev_sets": per_set}
        metrics["spread"] = spread(metrics["by_language"])
    if out_dir is not None and accelerator.is_main_process:
        # last: a metrics.json beside predictions means they are of the same evaluation
        io.write_json(Path(out_dir) / METRICS_FILE, metrics, indent=2)
    return metrics
