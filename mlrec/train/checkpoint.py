"""Atomic, rotating checkpoints: accelerate's full state plus the trainer's own counters.

A checkpoint is written into a hidden temporary folder and renamed to `step-XXXXXXXX` only once
every process has finished writing, so a crash or kill -9 mid-write never leaves a folder that
looks complete. `trainer_state.json` is written last inside it and marks completeness.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import gather_object

from mlrec import io
from mlrec.models.trained import CheckpointError, read_state
from mlrec.runs import PREFIX, STATE_FILE, checkpoint_dirs


def save_checkpoint(
    accelerator: Accelerator, root: str | Path, step: int, state: dict[str, Any], keep_last: int
) -> Path:
    """Write a checkpoint for `step` on every rank; return its final folder."""
    root = Path(root)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    failure = None
    if accelerator.is_main_process:
        # half-written folders of a run that was killed mid-save: never complete, never loaded
        for stale in root.glob(f".tmp-{PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        failure = _attempt(lambda: tmp.mkdir(parents=True))
    _agree(accelerator, failure, root, tmp, final)
    _agree(accelerator, _attempt(lambda: accelerator.save_state(str(tmp))), root, tmp, final)
    failure = None
    if accelerator.is_main_process:

        def finish() -> None:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            io.publish(tmp, final)

        failure = _attempt(finish)
    _agree(accelerator, failure, root, tmp, final)
    if accelerator.is_main_process:
        for old in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _attempt(write) -> str | None:
    """Run a write; what went wrong (a full disk, a quota, permissions) or None. Not only
    OSError: safetensors and torch.save report a failed write as their own errors."""
    try:
        write()
    except Exception as err:
        return f"{type(err).__name__}: {str(err)[:300]}"
    return None


def _agree(accelerator: Accelerator, failure: str | None, root: Path, tmp: Path, final: Path):
    """Every rank learns whether any rank failed to write (instead of the others waiting at the
    next barrier for one that has died), then all stop with the same error; the half-written
    folder is removed and the checkpoints already there are untouched."""
    failures = [f for f in gather_object([failure]) if f]
    if not failures:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    kept = checkpoint_dirs(root)
    earlier = f"the latest complete one, {kept[-1]}, is intact" if kept else "none is complete"
    raise CheckpointError(
        f"could not write checkpoint {final} ({failures[0]}); {earlier}. Free space (or fix the "
        "folder) and continue with train.resume=latest"
    )


def load_checkpoint(accelerator: Accelerator, path: str | Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the trainer's counters.

    All of it or an error: a checkpoint restored in part (accelerate only logs a missing RNG
    state, and carries on) would continue a run that is no longer the one it claims to be.
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete mlrec checkpoint (no {STATE_FILE})")
    advice = "resume from an earlier checkpoint (train.resume=<its folder>) or start over"
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    broken = [p.name for p in sorted(path.rglob("*")) if p.is_file() and not p.stat().st_size]
    if not rng.is_file():
        broken.append(f"{rng.name} (missing)")
    if broken:
        raise CheckpointError(f"{path}: {', '.join(broken)} empty or missing; {advice}")
    state = read_state(path)
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # a truncated file fails in safetensors, torch.load or json
        raise CheckpointError(
            f"{path} cannot be restored ({type(err).__name__}: {str(err)[:200]}); {advice}"
        ) from None
    return state
