"""The stages of an mlrec run, each callable on its own or chained by `quickstart`.

data -> shard -> train (evaluates at the end) -> export -> serve. Each stage reads what the
previous one wrote under the run directory (or the folders the config names) and says where it
wrote.
"""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path
from typing import Any

from mlrec.config import Config, ConfigError
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


def shard(
    cfg: Config,
    *,
    workers: int = 1,
    part: tuple[int, int] | None = None,
    step: str = "all",
    inspect: bool = False,
) -> dict[str, Any] | None:
    """All of sharding, or one step of it for cluster jobs: `items` (the item table), one `part`
    (slice i of n of the units) or `merge` (the manifest); `inspect` only reads a finished one."""
    from mlrec.data import shards

    if inspect:
        from mlrec.data.inspect import describe

        print(describe(cfg.shards_dir))
        return None
    if step == "items":
        prepare_corpus(cfg)
        shards.build_items(cfg, cfg.shards_dir, progress=True)
        return None
    if part is not None:
        written = shards.shard_slice(cfg, *part)
        log.info("slice %d/%d: %d shard units in %s", *part, written, cfg.shards_dir)
        return None
    manifest = shards.merge_shards(cfg) if step == "merge" else build_shards(cfg, workers=workers)
    log.info("shards, item table and manifest: %s", cfg.shards_dir)
    return manifest


def train(cfg: Config) -> dict[str, Any]:
    """Train (resuming if configured), evaluate, and close the process group."""
    from mlrec.train.trainer import Trainer

    with closing(Trainer(cfg)) as trainer:
        return trainer.train()


def _restored(cfg: Config):
    """The trainer of a finished run with its latest checkpoint loaded (optimizer included)."""
    from mlrec.distill.recommend import MARKER, Distiller
    from mlrec.train.trainer import Trainer

    # a distilled run's checkpoints also hold the student's projection head
    distilled = (Path(cfg.run_dir) / MARKER).is_file()
    trainer = Distiller(cfg) if distilled else Trainer(cfg)
    if not trainer.restore("latest", to_train=False):
        trainer.close()
        raise FileNotFoundError(
            f"no checkpoint under {trainer.checkpoint_root}: train first with `mlrec train`"
        )
    return trainer


def trained_model(cfg: Config):
    """The recommender of the run's latest checkpoint and its tokenizer: weights only, no
    optimizer, scheduler or accelerator (export and evaluation read, they do not train)."""
    from mlrec.data.layout import TOKENIZER_DIR, load_manifest
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.models.trained import load_trained
    from mlrec.runs import checkpoint_root, latest_checkpoint

    root = checkpoint_root(cfg.run_dir)
    checkpoint = latest_checkpoint(root)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint under {root}: train first with `mlrec train`")
    pad_id = load_manifest(cfg.shards_dir)["tokenizer"]["pad_token_id"]
    tokenizer = load_tokenizer(cfg.shards_dir / TOKENIZER_DIR)
    log.info("model of %s", checkpoint)
    return load_trained(cfg, checkpoint, len(tokenizer), pad_id), tokenizer


def evaluate(cfg: Config) -> dict[str, Any]:
    with closing(_restored(cfg)) as trainer:
        return trainer.evaluate()


def export(cfg: Config) -> Path:
    """Hugging Face export, then (export.onnx) ONNX fp32/int8 models and their parity check,
    then (export.catalog_vectors) the catalog's item vectors for `mlrec serve`."""
    from mlrec.export.hf import export_model

    if cfg.export.triton and not cfg.export.onnx:
        raise ConfigError("export.triton needs export.onnx: Triton serves the ONNX models")
    model, tokenizer = trained_model(cfg)
    out = cfg.export_dir
    export_model(model, tokenizer, cfg, out)
    log.info("exported to %s (transformers.AutoModel.from_pretrained loads it)", out)
    if cfg.export.onnx:
        export_onnx_checked(cfg, out)
    if cfg.export.catalog_vectors:
        from mlrec.serve.vectors import write_catalog_vectors

        # the backend `mlrec serve` runs with this config; without ONNX models only torch can
        write_catalog_vectors(out, cfg, cfg.serve.backend if cfg.export.onnx else "torch")
    return out


def export_onnx_checked(cfg: Config, out: Path) -> None:
    """ONNX models of an export, the parity check (raises ParityError), optionally Triton."""
    try:
        from mlrec.export.onnx_models import export_onnx
    except ImportError as err:
        raise ConfigError(
            f"export.onnx needs ONNX Runtime ({err}), part of mlrec's base install: reinstall "
            "mlrec (pip install -e .), or set export.onnx=false"
        ) from err
    from mlrec.export.parity import check_parity

    export_onnx(out)
    report = check_parity(out, cfg.shards_dir, cfg.export.parity_impressions)
    if cfg.export.triton:
        from mlrec.export.triton import write_triton_repository

        dim = cfg.model.projection_dim or report["dim"]
        log.info("Triton model repository: %s", write_triton_repository(out, dim))


def align(cfg: Config) -> dict[str, Any]:
    """Cross-lingual alignment of an item encoder on parallel text (see mlrec.distill.align)."""
    from mlrec.distill.align import align as run_align

    return run_align(cfg)


def distill(cfg: Config, *, cache_teacher: bool = False) -> dict[str, Any] | None:
    """Train a student recommender on a teacher's outputs (see mlrec.distill.recommend), or
    with `cache_teacher` only write the teacher's outputs next to the shards (offline mode)."""
    from mlrec.distill import recommend

    if cache_teacher:
        recommend.cache_teacher(cfg)
        return None
    with closing(recommend.Distiller(cfg)) as trainer:
        return trainer.train()


def xling(cfg: Config) -> Path:
    """xMIND's transfer protocol: the corpus rewritten for ZS-/FS-XLT (mlrec.data.xling)."""
    from mlrec.data.xling import rewrite_corpus

    return rewrite_corpus(cfg)


def serve(cfg: Config) -> None:
    """Answer ranking requests for the export in cfg.export_dir (see mlrec.serve.app)."""
    from mlrec.serve.app import serve as run_server

    run_server(cfg.export_dir, cfg)
