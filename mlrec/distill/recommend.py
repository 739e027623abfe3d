"""`mlrec distill`: a student recommender learns from a frozen teacher recommender.

    loss = w_hard * CE(student scores, clicked)
         + w_kl   * T^2 * KL(softmax(teacher / T) || softmax(student / T))   over the candidates
         + w_mse  * (MSE(W items_s, items_t) + MSE(W users_s, users_t))

W is a learned linear projection from the student's item width to the teacher's (the identity when
they match). The teacher is an mlrec export (`mlrec.export.hf.load_export`): frozen, in eval mode,
moved to the device by hand and never handed to `accelerator.prepare` or the optimizer, so DDP and
DeepSpeed only ever see the student.

Online, the teacher scores each batch. Offline (`distill.mode: offline`), `cache_teacher` first
writes the teacher's item vectors (one per row of the item table) and user vectors (one per
training impression) into `<shards_dir>/teacher/` and records the teacher in the manifest; the
student's run then needs no teacher in memory, and its scores are the same dot products.
The student keeps the shards' tokenizer; a teacher with a different vocabulary re-reads the
batch's items as text through its own tokenizer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mlrec import io
from mlrec.config import Config, ConfigError
from mlrec.data.layout import ITEM_TOKENS, MANIFEST, load_manifest, shard_files
from mlrec.data.loader import read_impressions
from mlrec.distill.teachers import weights_digest
from mlrec.evaluation.encode import TorchItems, encode_rows
from mlrec.models.recommender import Recommender, candidate_scores, target_columns
from mlrec.train.trainer import Trainer

log = logging.getLogger(__name__)

TEACHER_DIR = "teacher"
MARKER = "distill.json"  # in the run directory: the teacher, and that checkpoints hold a head


class DistillStudent(Recommender):
    """The student recommender plus the projection of its vectors into the teacher's width."""

    def __init__(self, base: Recommender, teacher_dim: int, with_head: bool) -> None:
        super().__init__(base.item_encoder, base.user_encoder)
        dim = base.item_encoder.dim
        # only a head that gets gradients may exist: DDP rejects unused parameters
        self.head = nn.Linear(dim, teacher_dim) if with_head and dim != teacher_dim else None

    def forward(
        self,
        item_ids,
        item_mask,
        history,
        history_mask,
        candidates,
        in_batch=False,
        item_features=None,
    ):
        """Scores as Recommender.forward, plus (projected) item and user vectors, so that the
        whole student runs inside one DDP forward (gradients of every part are synchronised)."""
        items = self.item_encoder(item_ids, item_mask, item_features)
        users = self.user_vectors(items, history, history_mask)
        scores = candidate_scores(users, items, candidates, in_batch)
        if self.head is not None:
            items, users = self.head(items), self.head(users)
        return scores, items, users


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, cfg: Any
) -> dict[str, torch.Tensor]:
    """The hard and soft terms over [batch, candidates] scores (`cfg` is a DistillConfig)."""
    t = cfg.temperature
    hard = F.cross_entropy(student, labels)
    soft = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
    return {"hard": hard, "kl": soft}


def teacher_dir(cfg: Config) -> Path:
    return cfg.shards_dir / TEACHER_DIR


def _token_key(tokens: np.ndarray, pad_id: int) -> bytes:
    return tokens[tokens != pad_id].astype(np.int32).tobytes()


class Distiller(Trainer):
    """The Trainer with a teacher: same loop, checkpoints and evaluation; another loss."""

    def __init__(self, cfg: Config, accelerator=None) -> None:
        if not cfg.distill.teacher:
            raise ConfigError("distill.teacher is empty: name an mlrec export folder")
        from mlrec.export.hf import load_export

        teacher, self.teacher_tokenizer, teacher_cfg = load_export(
            cfg.distill.teacher, cfg.model.trust_remote_code
        )
        self.teacher: Recommender | None = teacher.eval().requires_grad_(False)
        self.teacher_name = teacher_record(cfg.distill.teacher)
        self.teacher_dim = teacher.item_encoder.dim
        super().__init__(cfg, accelerator)
        self.teacher.to(self.accelerator.device)
        self.same_vocab = self.teacher_tokenizer.get_vocab() == self.tokenizer.get_vocab()
        self.teacher_max_tokens = teacher_cfg.data.max_item_tokens
        self.cache: dict[str, Any] | None = None
        if cfg.distill.mode == "offline":
            self.cache = load_teacher_cache(cfg, self.teacher_name, self.pad_id)
            self.teacher = None  # offline: the teacher's outputs are on disk, not in memory
        self.parts: dict[str, float] = {}

    def train(self) -> dict[str, Any]:
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            record = {"teacher": self.teacher_name, "mode": self.cfg.distill.mode}
            (self.run_dir / MARKER).write_text(json.dumps(record, indent=2))
        return super().train()

    def build_model(self) -> Recommender:
        return DistillStudent(super().build_model(), self.teacher_dim, self.cfg.distill.w_mse > 0)

    # -- the teacher's view of a batch -----------------------------------------------------
    def teacher_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's items in the teacher's tokens (the same ids when the vocabularies match)."""
        if self.same_vocab:
            return batch["item_ids"], batch["item_mask"]
        texts = self.tokenizer.batch_decode(batch["item_ids"].cpu(), skip_special_tokens=True)
        enc = self.teacher_tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.teacher_max_tokens,
            return_tensors="pt",
        )
        device = self.accelerator.device
        return enc["input_ids"].to(device), enc["attention_mask"].bool().to(device)

    @torch.no_grad()
    def teacher_outputs(
        self, batch: dict[str, Any], in_batch: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Teacher scores (as `candidate_scores`), item vectors and user vectors."""
        if self.cache is not None:
            items, users = offline_vectors(self.cache, batch, self.pad_id)
            items, users = items.to(self.accelerator.device), users.to(self.accelerator.device)
        else:
            assert self.teacher is not None
            ids, mask = self.teacher_inputs(batch)
            items = self.teacher.item_encoder(ids, mask).float()
            users = self.teacher.user_vectors(
                items, batch["history"], batch["history_mask"]
            ).float()
        return candidate_scores(users, items, batch["candidates"], in_batch), items, users

    # -- the loss --------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        dcfg = self.cfg.distill
        # with in-batch negatives both softmaxes run over every candidate of the batch
        in_batch = self.cfg.train.in_batch_negatives
        scores, items, users = self.model_outputs(batch, in_batch)
        t_scores, t_items, t_users = self.teacher_outputs(batch, in_batch)
        labels = target_columns(batch["labels"], batch["candidates"], in_batch)
        parts = distillation_loss(scores.float(), t_scores, labels, dcfg)
        total = dcfg.w_hard * parts["hard"] + dcfg.w_kl * parts["kl"]
        if dcfg.w_mse > 0:
            parts["mse"] = F.mse_loss(items.float(), t_items) + F.mse_loss(users.float(), t_users)
            total = total + dcfg.w_mse * parts["mse"]
        self.parts = {k: float(v.detach()) for k, v in parts.items()}
        return total

    def train_step(self, batches) -> dict[str, float]:
        stats = super().train_step(batches)
        stats.update({f"distill_{k}": v for k, v in self.parts.items()})
        return stats


def teacher_record(path: str | Path) -> dict[str, Any]:
    """What names a teacher export: its folder and a digest of its weights and heads."""
    return {"path": str(Path(path).resolve()), "sha256": weights_digest(path)}


@torch.no_grad()
def cache_teacher(cfg: Config) -> Path:
    """Offline distillation, step 1: the teacher's item vectors (every row of the item table) and
    user vectors (every training impression) into <shards_dir>/teacher/; the manifest records
    the teacher. Runs on one process; the teacher is needed only here."""
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.export.hf import load_export

    if not cfg.distill.teacher:
        raise ConfigError("distill.teacher is empty: name an mlrec export folder")
    teacher, teacher_tok, teacher_cfg = load_export(
        cfg.distill.teacher, cfg.model.trust_remote_code
    )
    manifest = load_manifest(cfg.shards_dir)
    pad_id = manifest["tokenizer"]["pad_token_id"]
    table = np.load(cfg.shards_dir / ITEM_TOKENS, mmap_mode="r")
    student_tok = load_tokenizer(cfg.shards_dir / "tokenizer", cfg.model.trust_remote_code)
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        texts = student_tok.batch_decode(table.astype(np.int64), skip_special_tokens=True)
        enc = teacher_tok(
            texts, padding="max_length", truncation=True,
            max_length=teacher_cfg.data.max_item_tokens, return_tensors="np",
        )  # fmt: skip
        t_table, t_pad = enc["input_ids"].astype(np.int32), teacher_tok.pad_token_id
    else:
        t_table, t_pad = np.asarray(table), pad_id
    rows = list(range(len(table)))
    items = encode_rows(TorchItems(teacher.item_encoder), t_table, rows, t_pad, cfg.eval.batch_size)
    impressions, users = [], []
    max_history = cfg.data.max_history
    for imp in read_impressions(shard_files(cfg.shards_dir, "train")):
        hist = imp["history"][-max_history:]
        vectors = torch.from_numpy(items[hist] if hist else np.zeros((1, items.shape[1]), "f4"))
        mask = torch.zeros(1, len(vectors), dtype=torch.bool)
        mask[0, : len(hist)] = True
        users.append(teacher.user_encoder(vectors[None], mask).float().numpy()[0])
        impressions.append(imp["impression"])
    out = teacher_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "items.npy", items.astype(np.float32))
    np.save(out / "users.npy", np.stack(users).astype(np.float32))
    record = {
        "teacher": teacher_record(cfg.distill.teacher),
        "items": len(items),
        "impressions": impressions,
        "max_history": max_history,
        "dim": int(items.shape[1]),
    }
    (out / "teacher.json").write_text(json.dumps(record))
    manifest["teacher"] = {**record["teacher"], "dir": TEACHER_DIR, "max_history": max_history}
    io.write_json(cfg.shards_dir / MANIFEST, manifest, indent=2)
    log.info("teacher outputs for %d items, %d impressions: %s", len(items), len(users), out)
    return out


def load_teacher_cache(cfg: Config, teacher: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """The cached teacher outputs, checked against the configured teacher and history length."""
    out = teacher_dir(cfg)
    if not (out / "teacher.json").is_file():
        raise FileNotFoundError(
            f"{out}/teacher.json not found: cache the teacher first with "
            "`mlrec distill --cache-teacher` (or set distill.mode=online)"
        )
    record = json.loads((out / "teacher.json").read_text())
    if record["teacher"]["sha256"] != teacher["sha256"]:
        raise ConfigError(
            f"distill.teacher: {out} holds outputs of {record['teacher']['path']}, not of "
            f"{teacher['path']}; re-run `mlrec distill --cache-teacher`"
        )
    if record["max_history"] != cfg.data.max_history:
        raise ConfigError(
            f"data.max_history is {cfg.data.max_history} but the teacher cache was written with "
            f"{record['max_history']}; re-run `mlrec distill --cache-teacher`"
        )
    table = np.load(cfg.shards_dir / ITEM_TOKENS, mmap_mode="r")
    return {
        "items": torch.from_numpy(np.load(out / "items.npy")),
        "users": torch.from_numpy(np.load(out / "users.npy")),
        "impression_row": {imp: i for i, imp in enumerate(record["impressions"])},
        # batches hold tokens, not table rows: a row is found again by its tokens
        "item_row": {_token_key(np.asarray(table[r]), pad_id): r for r in range(len(table))},
    }


def offline_vectors(
    cache: dict[str, Any], batch: dict[str, Any], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = batch["item_ids"].cpu().numpy()
    rows = [cache["item_row"][_token_key(t, pad_id)] for t in tokens]
    users = [cache["impression_row"][imp] for imp in batch["impressions"]]
    return cache["items"][rows], cache["users"][users]
