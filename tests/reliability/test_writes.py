"""Writes that fail halfway leave what was there before: a full disk while checkpointing, a
kill -9 in the middle of an export. Faults are injected into real `mlrec` processes: the file
size limit (RLIMIT_FSIZE) makes the kernel fail writes as a full disk would (EFBIG rather than
ENOSPC, the same path through Python), and a patched step holds the process mid-export while it
is killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlrec.runs import STATE_FILE, checkpoint_dirs
from tests.conftest import TINY

BIN = Path(sys.executable).parent

# Runs `mlrec` with one fault planted first; argv: fault, then mlrec's own arguments.
WITH_FAULT = """
import resource, sys, time
from pathlib import Path
fault, args = sys.argv[1], sys.argv[2:]
if fault == "disk-full-after-first-checkpoint":
    from mlrec.train import checkpoint, trainer
    original = checkpoint.save_checkpoint
    def save_then_fill_the_disk(*a, **k):
        out = original(*a, **k)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
        return out
    trainer.save_checkpoint = save_then_fill_the_disk
elif fault.startswith("hang-in-parity:"):
    marker = Path(fault.split(":", 1)[1])
    from mlrec.export import parity
    def hang(*a, **k):
        marker.touch()
        time.sleep(600)
    parity.check_parity = hang
from mlrec.cli import main
sys.exit(main(args))
"""


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def with_fault(fault: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", WITH_FAULT, fault, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def mlrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mlrec"), *args], capture_output=True, text=True, timeout=600, env=env()
    )


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def train_args(run: Path, shards: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={shards}",
            "train.steps=12", "train.checkpoint_every=4", "train.keep_last=5",
            *overrides]  # fmt: skip


def test_a_full_disk_while_checkpointing_stops_with_the_last_checkpoint_intact(
    tiny_shards, tmp_path
):
    straight = mlrec(*train_args(tmp_path / "straight", tiny_shards))
    assert straight.returncode == 0, straight.stderr[-3000:]
    run = tmp_path / "run"
    full = with_fault("disk-full-after-first-checkpoint", *train_args(run, tiny_shards))
    assert full.returncode == 2, full.stderr[-3000:]
    root = run / "checkpoints"
    assert f"could not write checkpoint {root / 'step-00000008'}" in full.stderr
    assert "File too large" in full.stderr and "Traceback" not in full.stderr
    assert f"the latest complete one, {root / 'step-00000004'}, is intact" in full.stderr
    assert [p.name for p in checkpoint_dirs(root)] == ["step-00000004"]
    assert not list(root.glob(".tmp-*"))  # the half-written folder is gone
    assert json.loads((root / "step-00000004" / STATE_FILE).read_text())["step"] == 4

    # space again: the run continues from step 4 and ends as the uninterrupted run did
    resumed = mlrec(*train_args(run, tiny_shards, "train.resume=latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {root / 'step-00000004'} at step 4" in resumed.stderr
    assert (run / "eval" / "metrics.json").read_text() == (
        tmp_path / "straight" / "eval" / "metrics.json"
    ).read_text()


@pytest.fixture(scope="module")
def trained(tiny_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("exported")
    done = mlrec(*train_args(run, tiny_shards))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_a_kill_in_the_middle_of_an_export_leaves_the_earlier_export_whole(trained, tmp_path):
    export = trained / "export"
    first = mlrec("export", str(trained))
    assert first.returncode == 0, first.stderr[-3000:]
    before = digests(export)
    assert "model.safetensors" in before and "onnx/item_encoder.onnx" in before

    marker = tmp_path / "in-parity"
    cmd = [sys.executable, "-c", WITH_FAULT, f"hang-in-parity:{marker}", "export", str(trained)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.monotonic() + 300
    while not marker.exists():  # the new export's weights and ONNX models are written by now
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert digests(export) == before  # not one file of the earlier export changed
    left = [p for p in trained.iterdir() if p.name.startswith(".export.")]
    assert left, "the killed export's staging folder is where the next export will find it"

    again = mlrec("export", str(trained))
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [p for p in trained.iterdir() if p.name.startswith(".export.")]  # cleared
    assert digests(export).keys() == before.keys()
    assert digests(export)["model.safetensors"] == before["model.safetensors"]  # same model
