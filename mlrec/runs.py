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


def find_checkpoint(root: str | Path, which: str | Path | None = None) -> Path:
    """The latest complete checkpoint (`which` None or "latest"), the one of a step ("300"), or
    a checkpoint folder; a clear FileNotFoundError naming what exists otherwise."""
    root = Path(root)
    found = checkpoint_dirs(root)
    if which is None or str(which) == "latest":
        if not found:
            raise FileNotFoundError(f"no checkpoint under {root}: train first with `mlrec train`")
        return found[-1]
    # a step number names a folder of this run; anything else is a folder path
    path = root / f"{PREFIX}{int(which):08d}" if str(which).isdigit() else Path(which)
    if not (path / STATE_FILE).is_file():
        steps = ", ".join(str(int(p.name[len(PREFIX) :])) for p in found) or "none"
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (checkpoints of steps under {root}: {steps})"
        )
    return path
