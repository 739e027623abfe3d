"""The layout of a run directory, and which of its checkpoints are complete.

  <run_dir>/config.yaml                       the resolved config of the run
  <run_dir>/checkpoints/step-XXXXXXXX/        accelerate's state (model.safetensors, optimizer,
                                              scheduler, RNG) plus trainer_state.json, written last
  <run_dir>/eval/metrics.json                 the evaluation of the latest checkpoint
  <run_dir>/export/                           `mlrec export`

Training writes checkpoints (mlrec.train.checkpoint); evaluation and export read them
(mlrec.models.trained) without building a trainer, so both take the names from here.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
PREFIX = "step-"
STATE_FILE = "trainer_state.json"  # written last: a folder without it is incomplete
MODEL_WEIGHTS = "model.safetensors"  # accelerate's name for the first prepared model
ZERO_WEIGHTS_DIR = "pytorch_model"  # DeepSpeed's: the ZeRO-partitioned model and optimizer


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None
