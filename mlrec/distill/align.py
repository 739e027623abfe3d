"""`mlrec align`: map every language into the teacher's space by multilingual distillation
(Reimers & Gurevych, 2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
Distillation").

For each parallel pair (s, t) the frozen teacher embeds the source once, T(s) (cached on disk, see
teachers.py), and the student item encoder is trained so that both S(s) and S(t) match it:

    loss = MSE(W S(s), c T(s)) + MSE(W S(t), c T(s))

where W is a linear head when the student's width differs from the teacher's (else the identity)
and c one factor that gives the targets unit variance per dimension (`align.standardize_targets`,
see Aligner).
The result is written in Hugging Face format (backbone + tokenizer): `model.name_or_path` can name
it, so recommendation training starts from an encoder that already puts translations together.

The loop is short and single-process on purpose: alignment data is small (thousands of pairs)
next to recommendation logs, and a plain loop is easy to check.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import get_scheduler

from mlrec import locks
from mlrec.config import Config, ConfigError
from mlrec.data.pairs import ParallelSet, load_pairs
from mlrec.data.parallel import Pair
from mlrec.data.tokenizer import load_tokenizer, train_tokenizer
from mlrec.distill.teachers import Teacher, cached_embeddings, load_teacher
from mlrec.evaluation.retrieval import RETRIEVAL_FILE, retrieval_accuracy
from mlrec.models.recommender import ItemEncoder, build_backbone
from mlrec.train.trainer import build_accelerator, close_accelerator, lock_on_main

log = logging.getLogger(__name__)

HEAD_FILE = "align_head.safetensors"
RECORD_FILE = "align.json"


def out_dir(cfg: Config) -> Path:
    return Path(cfg.align.out_dir) if cfg.align.out_dir else Path(cfg.run_dir) / "aligned"


def cache_dir(cfg: Config) -> Path:
    return Path(cfg.align.cache_dir) if cfg.align.cache_dir else Path(cfg.run_dir) / "teacher-cache"


def student_tokenizer(cfg: Config, pairs: ParallelSet, out: Path):
    """The configured tokenizer, the student model's own, or one trained on the parallel text."""
    if cfg.model.tokenizer or cfg.model.name_or_path:
        return load_tokenizer(
            cfg.model.tokenizer or cfg.model.name_or_path, cfg.model.trust_remote_code
        )
    texts = [t for p in pairs.train for t in (p.source, p.target)]
    with tempfile.TemporaryDirectory() as tmp:  # saved with the encoder afterwards
        return train_tokenizer(texts, cfg.model.vocab_size, tmp)


def init_word_embeddings(backbone, table: np.ndarray, pad_id: int) -> None:
    """Copy the teacher's token embeddings into the student's, through PCA when the student is
    narrower (keeps the directions along which the teacher's tokens differ most), scaled to the
    student's own initial spread so its layers start where their init expects."""
    weight = backbone.get_input_embeddings().weight
    width = weight.shape[1]
    rows = table.astype(np.float64)
    used = np.abs(rows).sum(axis=1) > 0  # padding rows of the teacher's table stay out of the fit
    if table.shape[1] != width:
        if table.shape[1] < width:
            raise ValueError(
                f"model.hidden_size={width} is wider than the teacher's token embeddings "
                f"({table.shape[1]}); align.student_init=teacher needs hidden_size <= "
                f"{table.shape[1]}"
            )
        centred = rows - rows[used].mean(axis=0)
        _, vectors = np.linalg.eigh(centred[used].T @ centred[used])
        rows = centred @ vectors[:, ::-1][:, :width]  # eigh sorts ascending
    rows[~used] = 0.0
    with torch.no_grad():
        target_std = float(weight.std())
        values = torch.from_numpy(rows).float()
        weight.copy_(values * (target_std / float(values[torch.from_numpy(used)].std())))
        weight[pad_id].zero_()


class Student(nn.Module):
    """The item encoder being aligned, and the head into the teacher's width."""

    def __init__(self, encoder: ItemEncoder, teacher_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, teacher_dim) if encoder.dim != teacher_dim else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vectors = self.encoder(input_ids, attention_mask)
        return self.head(vectors) if self.head is not None else vectors


class Aligner:
    """Owns the student, the teacher's cached targets and the loop of one alignment run."""

    def __init__(self, cfg: Config, teacher: Teacher | None = None) -> None:
        self.cfg = cfg
        self.out = out_dir(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        self.accelerator = build_accelerator(cfg)
        torch.manual_seed(cfg.seed)
        self.pairs = load_pairs(cfg.align, cfg.data, cfg.corpus_dir)
        if not self.pairs.train:
            raise ValueError("no training pairs left after holding out align.heldout_per_language")
        self.teacher = teacher or load_teacher(
            cfg.align.teacher, cfg.align.teacher_max_tokens, cfg.model.trust_remote_code
        )
        if cfg.align.student_init == "teacher":
            self.tokenizer, table = self.teacher.vocabulary()
        else:
            self.tokenizer = student_tokenizer(cfg, self.pairs, self.out)
        backbone = build_backbone(cfg.model, len(self.tokenizer), self.tokenizer.pad_token_id)
        if cfg.align.student_init == "teacher":
            init_word_embeddings(backbone, table, self.tokenizer.pad_token_id)
        encoder = ItemEncoder(backbone, cfg.model.pooling, 0)
        self.student = Student(encoder, self.teacher.dim)
        sources = sorted({p.source for p in self.pairs.train})
        self.row = {s: i for i, s in enumerate(sources)}
        self.targets = torch.from_numpy(cached_embeddings(self.teacher, sources, cache_dir(cfg)))
        # Unit-norm teacher vectors (mUSE: 512-d) are about 0.04 per dimension, far below the
        # student's LayerNorm'd outputs: the loss then falls fastest by predicting their mean,
        # and the student collapsed there (retrieval 0.71 before training, 0.09 after 300 steps
        # on VLC; 0.96 with the targets scaled). One factor for all dimensions keeps the
        # teacher's geometry; the saved head divides it back out.
        self.target_scale = 1.0
        if cfg.align.standardize_targets:
            self.target_scale = float(1.0 / self.targets.std().clamp(min=1e-12))
            self.targets = self.targets * self.target_scale
        self.augment = None
        if cfg.align.code_switch > 0:
            from mlrec.data.augment import CodeSwitcher

            self.augment = CodeSwitcher.from_paths(
                cfg.align.lexicons, cfg.align.code_switch, seed=cfg.seed
            )

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.cfg.align.max_tokens,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"].bool()

    def batches(self):
        """Endless, seeded passes over the training pairs."""
        rng = random.Random(self.cfg.seed)
        order = list(range(len(self.pairs.train)))
        size = min(self.cfg.align.batch_size, len(order))
        if size < self.accelerator.num_processes:
            raise ConfigError(
                f"align.batch_size={size} (or the number of training pairs) is below the "
                f"number of processes ({self.accelerator.num_processes})"
            )
        while True:
            rng.shuffle(order)
            for i in range(0, len(order) - size + 1, size):
                yield [self.pairs.train[j] for j in order[i : i + size]]

    def loss(self, student: nn.Module, batch: list[Pair]) -> torch.Tensor:
        sources = [p.source for p in batch]
        if self.augment is not None:
            sources = [self.augment(p.source, p.tgt_lang) for p in batch]
        ids, mask = self.tokens(sources + [p.target for p in batch])
        device = self.accelerator.device
        predicted = student(ids.to(device), mask.to(device)).float()
        wanted = self.targets[[self.row[p.source] for p in batch]].to(device)
        return nn.functional.mse_loss(predicted, torch.cat([wanted, wanted]))

    def train(self) -> list[float]:
        """The loop, on accelerate as training's is (devices, mixed precision, several
        processes): every process draws the same seeded batches and takes its own share of each,
        so the global batch is `align.batch_size` whatever the process count."""
        acfg, accelerator = self.cfg.align, self.accelerator
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=acfg.lr, weight_decay=self.cfg.train.weight_decay)
        schedule = get_scheduler(
            "cosine", optimizer, num_warmup_steps=acfg.warmup_steps, num_training_steps=acfg.steps
        )
        student, optimizer, schedule = accelerator.prepare(self.student, optimizer, schedule)
        student.train()
        batches = self.batches()
        rank, world = accelerator.process_index, accelerator.num_processes
        losses: list[float] = []
        start = time.perf_counter()
        for step in range(1, acfg.steps + 1):
            with accelerator.autocast():
                loss = self.loss(student, next(batches)[rank::world])
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, self.cfg.train.max_grad_norm or math.inf)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(accelerator.reduce(loss.detach(), "mean")))
            if step % self.cfg.train.log_every == 0 or step == acfg.steps:
                recent = losses[-self.cfg.train.log_every :]
                log.info(
                    "align step %d/%d  mse %.6f  %.1f s",
                    step,
                    acfg.steps,
                    sum(recent) / len(recent),
                    time.perf_counter() - start,
                )
        self.student = accelerator.unwrap_model(student).eval().cpu()
        return losses

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256, head: bool = False) -> np.ndarray:
        """The shipped encoder's vectors (the backbone's pooled output), or with `head` the
        student's vectors in the teacher's space (what the loss compares)."""
        self.student.eval()
        module = self.student if head else self.student.encoder
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokens(texts[i : i + batch_size])
            out.append(module(ids, mask).float().numpy())
        return np.concatenate(out)

    def retrieval(self) -> dict[str, dict[str, float]]:
        cache = cache_dir(self.cfg)
        scores = {
            "student": retrieval_accuracy(self.encode, self.pairs.heldout),
            "teacher": retrieval_accuracy(
                lambda texts: cached_embeddings(self.teacher, texts, cache), self.pairs.heldout
            ),
        }
        if self.student.head is not None:
            scores["student_projected"] = retrieval_accuracy(
                lambda texts: self.encode(texts, head=True), self.pairs.heldout
            )
        return scores

    def save(self, record: dict[str, Any]) -> Path:
        """The aligned encoder in Hugging Face format, its head, and what produced it."""
        self.student.encoder.backbone.save_pretrained(str(self.out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(self.out))
        if self.student.head is not None:
            # into the teacher's own scale: W x + b regressed scale * T(s)
            head = {
                k: (v / self.target_scale).contiguous()
                for k, v in self.student.head.state_dict().items()
            }
            save_file(head, str(self.out / HEAD_FILE))
        (self.out / RECORD_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False))
        return self.out


def align(cfg: Config, teacher: Teacher | None = None) -> dict[str, Any]:
    """Train, measure retrieval on the held-out pairs, save; returns the run's record (on the
    main process; the others return {} once it is written)."""
    aligner = Aligner(cfg, teacher)
    lock = None
    try:
        # one command at a time in the run directory (mlrec.locks), as for training
        lock = lock_on_main(aligner.accelerator, Path(cfg.run_dir), "aligning an item encoder")
        return _align(aligner)
    finally:
        close_accelerator(aligner.accelerator)
        if lock is not None:
            locks.release(lock)


def _align(aligner: Aligner) -> dict[str, Any]:
    cfg, main = aligner.cfg, aligner.accelerator.is_main_process
    before = retrieval_accuracy(aligner.encode, aligner.pairs.heldout) if main else {}
    start = time.perf_counter()
    losses = aligner.train()
    seconds = time.perf_counter() - start
    if not main:
        return {}
    retrieval = aligner.retrieval()
    retrieval["student_before"] = before
    record = {
        "teacher": aligner.teacher.name,
        "teacher_dim": aligner.teacher.dim,
        "student_dim": aligner.student.encoder.dim,
        "head": aligner.student.head is not None,
        "source_language": cfg.align.source_language,
        "languages": aligner.pairs.languages,
        "train_pairs": len(aligner.pairs.train),
        "heldout_pairs": {k: len(v) for k, v in aligner.pairs.heldout.items()},
        "steps": cfg.align.steps,
        "target_scale": aligner.target_scale,
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-10:])),
        "train_seconds": seconds,
        "retrieval": retrieval,
    }
    out = aligner.save(record)
    eval_dir = Path(cfg.run_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / RETRIEVAL_FILE).write_text(json.dumps(retrieval, indent=2))
    log.info(
        "aligned encoder: %s (retrieval top-1, mean over %d languages: student %.3f, before "
        "%.3f, teacher %.3f)",
        out,
        len(aligner.pairs.heldout),
        retrieval["student"].get("mean", float("nan")),
        before.get("mean", float("nan")),
        retrieval["teacher"].get("mean", float("nan")),
    )
    return record
