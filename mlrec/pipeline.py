"""The stages of an mlrec run, each callable on its own or chained by `quickstart`.

data -> shard -> train (evaluates at the end) -> export. Each stage reads what the previous one
wrote under the run directory (or the folders the config names) and says where it wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlrec.config import Config
from mlrec.data.corpus import behaviors_file, news_files, prepare_corpus
from mlrec.data.shards import build_shards

log = logging.getLogger(__name__)


def data(cfg: Config) -> Path:
    """Make the corpus available (generate the synthetic one) and list what it holds."""
    root = prepare_corpus(cfg)
    for lang, paths in sorted(news_files(cfg).items()):
        log.info("news [%s]: %s", lang, ", ".join(str(p) for p in paths))
    for split in ("train", "dev"):
        log.info("%s behaviors: %s", split, behaviors_file(cfg, split))
    return root


def shard(cfg: Config) -> dict[str, Any]:
    manifest = build_shards(cfg)
    log.info("shards, item table and manifest: %s", cfg.shards_dir)
    return manifest


def train(cfg: Config) -> dict[str, Any]:
    """Train (resuming if configured), evaluate, and close the process group."""
    from mlrec.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def _restored(cfg: Config):
    from mlrec.train.trainer import Trainer

    trainer = Trainer(cfg)
    if not trainer.restore("latest", to_train=False):
        trainer.close()
        raise FileNotFoundError(
            f"no checkpoint under {trainer.checkpoint_root}: train first with `mlrec train`"
        )
    return trainer


def evaluate(cfg: Config) -> dict[str, Any]:
    trainer = _restored(cfg)
    try:
        return trainer.evaluate()
    finally:
        trainer.close()


def export(cfg: Config) -> Path:
    from mlrec.export.hf import export_model

    trainer = _restored(cfg)
    try:
        out = cfg.export_dir
        if trainer.accelerator.is_main_process:
            export_model(trainer.recommender, trainer.tokenizer, cfg, out)
            log.info("exported to %s (transformers.AutoModel.from_pretrained loads it)", out)
        return out
    finally:
        trainer.close()
