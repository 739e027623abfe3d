"""The training loop: one explicit loop on accelerate, readable top to bottom.

`Trainer.train()` restores the latest checkpoint if asked, then runs `train_step` until
`train.steps`, logging to TensorBoard and checkpointing on the way, and finally evaluates on the
held-out impressions. The trainer is stateful: its counters and the data position go into every
checkpoint, so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
    broadcast_object_list,
    set_seed,
)
from transformers import get_scheduler

from mlrec import locks
from mlrec.config import Config, ConfigError
from mlrec.data.features import tower_features
from mlrec.data.layout import ITEM_TOKENS, TOKENIZER_DIR, load_manifest
from mlrec.data.loader import train_loader
from mlrec.data.tokenizer import load_tokenizer
from mlrec.evaluation.metrics import METRICS, format_table
from mlrec.evaluation.ranking import evaluate
from mlrec.models.adapters import (
    ADAPTER_DIR,
    adalora_rank,
    adapt_backbone,
    enable_gradient_checkpointing,
    save_adapter,
)
from mlrec.models.layer_cache import attach_layer_cache
from mlrec.models.recommender import Recommender, build_recommender, target_columns
from mlrec.models.trained import read_state, same_tokenizer
from mlrec.runs import STATE_FILE, checkpoint_dirs, checkpoint_root, latest_checkpoint
from mlrec.train import adalora_deepspeed
from mlrec.train.checkpoint import load_checkpoint, save_checkpoint
from mlrec.train.signals import Preempted, StopSignals

log = logging.getLogger(__name__)


def build_accelerator(cfg: Config) -> Accelerator:
    """Accelerator for this machine: on a CPU-only host, gloo across the launched processes."""
    no_gpu = not torch.cuda.is_available()
    # `accelerate launch --config_file <deepspeed yaml>` says so through the environment; cpu=True
    # would silently replace DeepSpeed with plain DDP (DeepSpeed runs on CPU via DS_ACCELERATOR)
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
    cpu = no_gpu and not deepspeed
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # On CPU, accelerate (and DeepSpeed under it) only count the launched processes when told
    # to use gloo; alone, the same setting makes it look for a process group that is not there.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if no_gpu and launched else []
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.mixed_precision,
        # a plugin object, because a bare count is overridden by the launch YAML's environment
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.train.grad_accum),
        # train.steps counts optimizer steps whatever the process count: step the schedule once
        # per optimizer step (accelerate would otherwise step it once per process)
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )


def close_accelerator(accelerator: Accelerator) -> None:
    """Wait for every process, end the trackers, and leave the process group."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Without this, a rank sometimes aborts at interpreter exit (see ENVIRONMENT notes).
        torch.distributed.destroy_process_group()


def lock_on_main(accelerator: Accelerator, folder: Path, what: str) -> Path | None:
    """The main process takes `folder`'s lock (mlrec.locks; the token, or None elsewhere); when
    another command holds it, every rank raises FolderInUse, not only the main one (the others
    would wait for it at the next barrier)."""
    token, refusal = None, [None]
    if accelerator.is_main_process:
        try:
            token = locks.acquire(folder, what)
        except locks.FolderInUse as err:
            refusal = [str(err)]
    refusal = broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise locks.FolderInUse(refusal[0])
    return token


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class Diverged(ConfigError):
    """The loss became NaN or infinite: continuing would only save and export broken weights."""


class Trainer:
    """Owns the model, optimizer, schedule, data position and logs of one run."""

    def __init__(self, cfg: Config, accelerator: Accelerator | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.accelerator = accelerator or build_accelerator(cfg)
        set_seed(cfg.seed)
        self.manifest = load_manifest(cfg.shards_dir)
        self.pad_id = self.manifest["tokenizer"]["pad_token_id"]
        self.tokenizer = load_tokenizer(cfg.shards_dir / TOKENIZER_DIR, cfg.model.trust_remote_code)
        # the items' teacher vectors, for a teacher-feature item tower (None: the text tower)
        self.features = tower_features(cfg.model.item_tower, cfg.data.item_features, cfg.shards_dir)
        model = self.build_model()
        if cfg.model.layer_cache:
            self.attach_layer_cache(model)
        # AdaLoRA reallocates ranks itself, every step, from the peft model (not the DDP wrapper)
        self.adalora = model.item_encoder.backbone if cfg.adapter.method == "adalora" else None
        params = [p for p in model.parameters() if p.requires_grad]
        plugin = self.accelerator.state.deepspeed_plugin
        # torch's fused AdamW updates every tensor in one kernel (on CPU about 7x faster than the
        # default per-tensor loop for this model's ~60 tensors); DeepSpeed keeps the stock one,
        # whose flat-partition handling is what it is tested with
        optimizer = torch.optim.AdamW(
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=plugin is None
        )
        scheduler = get_scheduler(
            cfg.train.schedule,
            optimizer,
            num_warmup_steps=cfg.train.warmup_steps,
            num_training_steps=cfg.train.steps,
        )
        self.deepspeed = plugin is not None
        if plugin is not None:
            # DeepSpeed sizes its batch from a prepared DataLoader, which mlrec never hands over
            # (see mlrec.data.loader), so it is told the micro-batch here.
            # The mlrec config is the one source of truth: a launch YAML that disagreed would
            # otherwise win silently and break the accumulation boundaries of the loop.
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
            plugin.deepspeed_config["gradient_accumulation_steps"] = cfg.train.grad_accum
            plugin.deepspeed_config["gradient_clipping"] = cfg.train.max_grad_norm
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, optimizer, scheduler
        )
        # Counters that make the run resumable: steps taken, batches drawn from this rank's
        # loader (its data position), and samples/tokens seen across all ranks.
        self.step = 0
        self.batches_consumed = 0
        self.samples_seen = 0
        self.tokens_seen = 0
        self._writer = None
        self._lock = None
        # scored beside the model at evaluation (mlrec.evaluation.ranking.BatchScorer); the
        # pipeline sets them, since a teacher baseline comes from outside the training layer
        self.baselines: dict[str, Any] = {}
        trainable = sum(p.numel() for p in params)
        total = sum(p.numel() for p in model.parameters())
        log.info("model: %d parameters, %d trainable (%s)", total, trainable, cfg.adapter.method)

    def build_model(self) -> Recommender:
        """The recommender to train, adapters applied (mlrec.distill's Distiller adds to it)."""
        cfg = self.cfg
        width = 0 if self.features is None else self.features.shape[1]
        model = build_recommender(cfg.model, len(self.tokenizer), self.pad_id, width)
        model.item_encoder.backbone = adapt_backbone(
            model.item_encoder.backbone, cfg.adapter, cfg.train.steps, cfg.model.layer_cache
        )
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(model.item_encoder.backbone)
        return model

    def attach_layer_cache(self, model: Recommender) -> None:
        """The frozen-layer cache (mlrec.models.layer_cache): the main process computes it (or
        finds it up to date), then every process maps it."""
        if self.accelerator.state.deepspeed_plugin is not None:
            raise ConfigError(
                "model.layer_cache: not with DeepSpeed (ZeRO-3 partitions the layers the cache "
                "is computed from); train with DDP, or without the cache"
            )
        model.to(self.accelerator.device)
        args = (
            model.item_encoder,
            self.cfg.model.layer_cache,
            self.cfg.model.layer_cache_dtype,
            self.cfg.shards_dir / ITEM_TOKENS,
            self.manifest["tokenizer"]["sha256"],
            self.pad_id,
            self.cfg.shards_dir,
        )
        if self.accelerator.is_main_process:
            attach_layer_cache(*args, build=True)
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            attach_layer_cache(*args, build=False)

    @property
    def writer(self):
        """TensorBoard writer of the main process (None elsewhere), opened on first use."""
        if self._writer is None and self.accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        return self._writer

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "batches_consumed": self.batches_consumed,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "world_size": self.accelerator.num_processes,
            # the token ids the weights were trained on: a re-shard with another tokenizer
            # renumbers them, and the model would score other tokens without a word
            "tokenizer_sha256": self.manifest["tokenizer"]["sha256"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.batches_consumed = state["batches_consumed"]
        self.samples_seen = state["samples_seen"]
        self.tokens_seen = state["tokens_seen"]

    @property
    def checkpoint_root(self) -> Path:
        return checkpoint_root(self.run_dir)

    def restore(self, which: str, to_train: bool = True) -> bool:
        """Load `which` ('latest' or a folder); False when 'latest' finds nothing yet.

        Training on needs the same number of processes (each rank's data position is its own);
        evaluating or exporting a checkpoint does not.
        """
        path = latest_checkpoint(self.checkpoint_root) if which == "latest" else Path(which)
        if path is None:
            return False
        if (path / STATE_FILE).is_file():  # before the weights: they would not even fit
            same_tokenizer(read_state(path), self.manifest, path, self.cfg.shards_dir)
        state = load_checkpoint(self.accelerator, path)
        if to_train and state["world_size"] != self.accelerator.num_processes:
            raise ConfigError(
                f"train.resume: {path} was written by {state['world_size']} processes and this "
                f"run has {self.accelerator.num_processes}; resume with the same process count"
            )
        self.load_state_dict(state)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def save(self) -> Path:
        return save_checkpoint(
            self.accelerator,
            self.checkpoint_root,
            self.step,
            self.state_dict(),
            self.cfg.train.keep_last,
        )

    # -- the loop ------------------------------------------------------------------------
    def batches(self):
        data = self.cfg.data
        loader = train_loader(
            self.cfg.shards_dir,
            batch_size=data.batch_size,
            negatives=data.negatives,
            max_history=data.max_history,
            seed=self.cfg.seed,
            num_workers=data.num_workers,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            skip_batches=self.batches_consumed,
            language_alpha=data.language_alpha,
            features=self.features is not None,
        )
        for batch in loader:
            self.batches_consumed += 1
            yield {
                k: v.to(self.accelerator.device) if torch.is_tensor(v) else v
                for k, v in batch.items()
            }

    def train(self) -> dict[str, Any]:
        cfg = self.cfg.train
        self.lock_run_dir()
        self.claim_run_dir()
        if self.accelerator.is_main_process:
            self.cfg.save(self.run_dir / "config.yaml")
        if cfg.resume:
            self.restore(cfg.resume)
        batches = self.batches()
        self.model.train()
        window: list[dict[str, float]] = []
        stop = StopSignals().install()
        while self.step < cfg.steps:
            window.append(self.train_step(batches))
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.log_step(window)
                window = []
            # SIGUSR1/SIGTERM (cluster time limit, preemption): checkpoint here, exit 75
            if stop.requested(self.accelerator):
                self.save()
                raise Preempted(self.step, stop.signal_name)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
        stop.uninstall()
        if not cfg.checkpoint_every or self.step % cfg.checkpoint_every:
            self.save()
        self.save_adapter(self.run_dir / ADAPTER_DIR)
        return self.evaluate()

    def lock_run_dir(self) -> None:
        """Hold the run directory's lock until close(): a second run started in it stops here,
        on every rank, before it writes anything."""
        self._lock = lock_on_main(self.accelerator, self.run_dir, f"training into {self.run_dir}")

    def claim_run_dir(self) -> None:
        """Refuse a run directory that holds another run's checkpoints unless this run resumes
        them or was told to start over: training on regardless mixed the two runs' checkpoints
        in one rotation (deleting the new ones) and left the old evaluation under the new
        config."""
        earlier = checkpoint_dirs(self.checkpoint_root)
        # every rank has looked before the main one may delete: they all take the same branch
        self.accelerator.wait_for_everyone()
        if not earlier or self.cfg.train.resume:
            return
        if not self.cfg.train.overwrite:
            steps = ", ".join(p.name for p in earlier)
            raise ConfigError(
                f"run_dir {self.run_dir} holds checkpoints of an earlier run ({steps}): continue "
                "it with train.resume=latest, start over with train.overwrite=true (deletes "
                "them), or choose another run_dir"
            )
        if self.accelerator.is_main_process:
            log.warning("train.overwrite: the earlier run in %s is deleted", self.run_dir)
            for name in (self.checkpoint_root, self.run_dir / "eval", self.run_dir / ADAPTER_DIR):
                shutil.rmtree(name, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def model_outputs(self, batch: dict[str, Any], in_batch: bool):
        """The (prepared) model on a batch: what the loss is computed from."""
        return self.model(
            batch["item_ids"],
            batch["item_mask"],
            batch["history"],
            batch["history_mask"],
            batch["candidates"],
            in_batch=in_batch,
            item_features=batch.get("item_features"),
        )

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Softmax cross-entropy of each positive against its negatives (and, with
        `train.in_batch_negatives`, against every other candidate of the batch)."""
        in_batch = self.cfg.train.in_batch_negatives
        scores = self.model_outputs(batch, in_batch)
        labels = target_columns(batch["labels"], batch["candidates"], in_batch)
        return torch.nn.functional.cross_entropy(scores.float(), labels)

    def train_step(self, batches) -> dict[str, float]:
        """One optimizer step over `train.grad_accum` micro-batches.

        accelerate's `accumulate` skips DDP's gradient all-reduce on all but the last
        micro-batch, scales the loss, and under DeepSpeed sets the engine's accumulation boundary
        (the engine then clips and steps inside `backward`; optimizer calls here become no-ops).
        """
        start = time.perf_counter()
        accum = self.cfg.train.grad_accum
        total_loss, samples, tokens = 0.0, 0, 0
        grad_norm: Any = 0.0
        for _ in range(accum):
            batch = next(batches)
            with self.accelerator.accumulate(self.model), self.accelerator.autocast():
                loss = self.compute_loss(batch)
                sync = self.accelerator.sync_gradients
                if self.adalora is not None and self.deepspeed:
                    adalora_deepspeed.backward_and_step(
                        self.model, self.adalora, loss, sync, self.step
                    )
                else:
                    self.accelerator.backward(loss)
                if sync:
                    grad_norm = self.accelerator.clip_grad_norm_(
                        self.model.parameters(), self.cfg.train.max_grad_norm or math.inf
                    )
                    self.optimizer.step()
                    self.scheduler.step()
                    if self.adalora is not None and not self.deepspeed:
                        # prunes ranks from the gradients' sensitivity: after the step, before
                        # the gradients are cleared (peft's documented order)
                        self.adalora.base_model.update_and_allocate(self.step)
                self.optimizer.zero_grad(set_to_none=True)
            total_loss += loss.detach().float() / accum
            samples += len(batch["labels"])
            tokens += int(batch["item_mask"].sum())
        counts = torch.tensor([samples, tokens], device=self.accelerator.device)
        samples, tokens = (int(x) for x in self.accelerator.reduce(counts, "sum"))
        self.samples_seen += samples
        self.tokens_seen += tokens
        elapsed = time.perf_counter() - start
        stats = {
            "loss": float(self.accelerator.reduce(total_loss, "mean")),
            "grad_norm": float(grad_norm if grad_norm is not None else float("nan")),
            "lr": self.scheduler.get_last_lr()[0],
            "step_time_s": elapsed,
            "samples_per_s": samples / elapsed,
            "tokens_per_s": tokens / elapsed,
            "memory_mb": peak_memory_mb(),
        }
        if self.adalora is not None:
            rank = adalora_deepspeed.kept_rank if self.deepspeed else adalora_rank
            stats["adalora_rank"] = float(rank(self.adalora))
        if not math.isfinite(stats["loss"]):
            # the mean over ranks, so every rank stops here together; nothing of it is saved
            raise Diverged(
                f"step {self.step + 1}: the training loss is {stats['loss']}: training diverged "
                f"(train.lr={self.cfg.train.lr}, train.max_grad_norm="
                f"{self.cfg.train.max_grad_norm}); lower the learning rate or check the data. "
                "No checkpoint of this step was written; earlier ones are kept"
            )
        return stats

    def log_step(self, window: list[dict[str, float]]) -> None:
        """Log the means over the steps since the last log (lr and memory: the latest value)."""
        if self.writer is None:
            return
        stats = {k: sum(s[k] for s in window) / len(window) for k in window[-1]}
        for latest in ("lr", "memory_mb", "adalora_rank"):  # states, not rates: no mean
            if latest in window[-1]:
                stats[latest] = window[-1][latest]
        for name, value in stats.items():
            self.writer.add_scalar(f"train/{name}", value, self.step)
        log.info(
            "step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f samples/s",
            self.step,
            self.cfg.train.steps,
            stats["loss"],
            stats["lr"],
            stats["grad_norm"],
            stats["samples_per_s"],
        )

    def evaluate(self) -> dict[str, Any]:
        """Dev-impression metrics, written with the scores behind them to <run_dir>/eval/
        (metrics.json, predictions.tsv, prediction.txt: mlrec.evaluation.ranking) and to
        TensorBoard."""
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate(
            model,
            self.accelerator,
            self.cfg.shards_dir,
            self.pad_id,
            batch_size=self.cfg.eval.batch_size,
            max_history=self.cfg.data.max_history,
            max_impressions=self.cfg.eval.max_impressions,
            out_dir=self.run_dir / "eval",
            baselines=self.baselines,
            reference_language=self.cfg.eval.reference_language,
            features=self.features,
        )
        if self.accelerator.is_main_process:
            assert self.writer is not None
            for lang, row in [*metrics["by_language"].items(), ("overall", metrics["overall"])]:
                # a language none of whose impressions could be scored has counts, no metrics
                for name in (m for m in METRICS if m in row):
                    self.writer.add_scalar(f"eval/{lang}/{name}", row[name], self.step)
            self.log_hparams(metrics)
            self.writer.flush()
            log.info("evaluation at step %d:\n%s", self.step, format_table(metrics))
        return metrics

    def log_hparams(self, metrics: dict[str, Any]) -> None:
        """The run's settings and final metrics for TensorBoard's HParams view, where runs under
        one --logdir line up for comparison; its metric columns read the eval/overall/* scalars."""
        from torch.utils.tensorboard.summary import hparams

        settings: dict[str, Any] = {"world_size": self.accelerator.num_processes}
        stack = list(self.cfg.to_dict().items())
        while stack:
            key, value = stack.pop()
            if isinstance(value, dict):
                stack += [(f"{key}.{k}", v) for k, v in value.items()]
            else:  # the plugin takes numbers, strings and booleans
                settings[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
        final = {f"eval/overall/{name}": metrics["overall"][name] for name in METRICS}
        for summary in hparams(settings, final):
            self.writer.file_writer.add_summary(summary, self.step)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights on the main process (ZeRO-3 partitions gathered; every
        process must call this)."""
        return self.accelerator.get_state_dict(self.model)

    def save_adapter(self, out: Path) -> Path | None:
        """Write the adapter alone (peft format, small) plus the recommender's heads.

        The weights come from `full_state_dict`, not from the live parameters: under ZeRO-3 each
        process holds only a slice of them, and saving those writes empty adapters.
        """
        if self.cfg.adapter.method not in ("lora", "adalora"):
            return None
        state = self.full_state_dict()
        if not self.accelerator.is_main_process:
            return None
        save_adapter(self.recommender, state, out)
        log.info("adapter (%s) and heads saved to %s", self.cfg.adapter.method, out)
        return out

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        close_accelerator(self.accelerator)
        if self._lock is not None:
            locks.release(self._lock)
            self._lock = None

    @property
    def recommender(self) -> Recommender:
        return self.accelerator.unwrap_model(self.model)
