"""One command at a time per run directory and shards folder, with real concurrent processes.

Before the locks, a second `mlrec train` in a busy run directory died and left config.yaml
holding its own settings beside the first run's weights; two `mlrec shard` runs into one folder
crashed each other and left temporary files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlrec import locks
from mlrec.train.signals import EXIT_PREEMPTED
from tests.conftest import TINY

BIN = Path(sys.executable).parent
MLREC = str(BIN / "mlrec")

HOLDER = """
import sys, time
from mlrec import locks
from mlrec.train.signals import EXIT_PREEMPTED
locks.acquire(sys.argv[1], "holding it for a test", shared=sys.argv[2] == "shared")
print("held", flush=True)
time.sleep(600)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def hold(folder: Path, shared: bool = False) -> subprocess.Popen:
    """Another process holding the folder's lock until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), "shared" if shared else "exclusive"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def mlrec(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLREC, *args], capture_output=True, text=True, timeout=timeout, env=env(), check=False
    )


def train_args(run: Path, shards: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={shards}",
            *overrides]  # fmt: skip


def test_a_second_training_run_in_a_busy_run_directory_stops_before_writing(tiny_shards, tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    # long enough to still be training when the second run starts; stopped by SIGTERM below
    first_args = train_args(
        run, tiny_shards, "train.steps=100000", "train.lr=0.001", "train.log_every=1"
    )
    with log.open("w") as out:
        first = subprocess.Popen(
            [MLREC, *first_args], stdout=out, stderr=subprocess.STDOUT, env=env()
        )
    try:
        deadline = time.monotonic() + 300
        while "step 1/100000" not in log.read_text():
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = mlrec(*train_args(run, tiny_shards, "train.steps=40", "train.lr=0.5"))
        assert first.poll() is None, "the first run must still be training"
    finally:
        first.send_signal(signal.SIGTERM)  # checkpoints and exits 75, as on a cluster
        assert first.wait(timeout=300) == EXIT_PREEMPTED, log.read_text()[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"{run} is in use by `mlrec train --config" in second.stderr
    assert f"(pid {first.pid} on " in second.stderr and "Traceback" not in second.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.001  # the running run's settings, not the refused one's
    assert saved["train"]["steps"] == 100000


def test_the_lock_goes_with_its_holder_even_on_kill_9(tmp_path):
    holder = hold(tmp_path)
    with pytest.raises(locks.FolderInUse, match=f"pid {holder.pid} on .*: holding it for a test"):
        locks.acquire(tmp_path, "a second holder")
    holder.kill()
    holder.wait()
    token = locks.acquire(tmp_path, "after the kill")  # nothing stale to clean up by hand
    locks.release(token)


@pytest.mark.multiproc
def test_both_ranks_of_a_refused_two_process_run_stop_at_once(tiny_shards, tmp_path):
    run = tmp_path / "ddp"
    holder = hold(run)
    try:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                  "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                  "-m", "mlrec", *train_args(run, tiny_shards)]  # fmt: skip
        done = subprocess.run(
            launch, capture_output=True, text=True, timeout=300,
            env={**env(), "ACCELERATE_USE_CPU": "true"},
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    # each rank says why (not one error and a rank left waiting at a barrier until the timeout)
    assert done.stderr.count(f"{run} is in use by") == 2, done.stderr[-3000:]
    assert not (run / "config.yaml").exists()


def test_two_sharding_runs_into_one_folder(tmp_path):
    run = tmp_path / "run"
    assert mlrec("data", "--config", str(TINY), f"run_dir={run}").returncode == 0
    cmd = [MLREC, "shard", "--config", str(TINY), f"run_dir={run}"]
    runs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env()) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert f"{run / 'shards'} is in use by `mlrec shard" in refused and "Traceback" not in refused
    shards = run / "shards"
    assert (shards / "manifest.json").is_file()
    assert not [p.name for p in shards.rglob("*") if ".tmp" in p.name]  # nothing half-written
    check = mlrec("shard", "--inspect", "--config", str(TINY), f"run_dir={run}")
    assert check.returncode == 0, check.stderr[-2000:]


def test_slices_of_one_job_share_the_folder_but_not_with_a_whole_run(tmp_path):
    shards = tmp_path / "shards"
    slices = hold(shards, shared=True)  # a slice of a SLURM array job, writing
    try:
        other = locks.acquire(shards, "another slice", shared=True)  # side by side: fine
        locks.release(other)
        with pytest.raises(locks.FolderInUse, match=f"pid {slices.pid}"):
            locks.acquire(shards, "a whole sharding run")
    finally:
        slices.kill()
        slices.wait()
    locks.release(locks.acquire(shards, "a whole sharding run"))


def test_a_process_re_enters_its_own_lock(tmp_path):
    outer = locks.acquire(tmp_path, "training")
    inner = locks.acquire(tmp_path, "evaluating at the end of training")
    locks.release(inner)
    other = subprocess.run(
        [sys.executable, "-c", HOLDER, str(tmp_path), "exclusive"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert other.returncode != 0 and "FolderInUse" in other.stderr  # the outer one still holds
    assert f"pid {os.getpid()}" in other.stderr
    locks.release(outer)
    locks.release(hold_and_free(tmp_path))


def hold_and_free(folder: Path) -> Path:
    return locks.acquire(folder, "free again")


FORKING_HOLDER = """
import os, sys, time
from mlrec import locks
locks.acquire(sys.argv[1], "holding it, with a forked worker")
if os.fork() == 0:  # a DataLoader worker, say: it outlives a parent killed with -9 for a while
    time.sleep(60)
    os._exit(0)
print("held", flush=True)
time.sleep(600)
"""


def test_a_forked_worker_does_not_keep_a_killed_parents_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(locks.FolderInUse):
        locks.acquire(tmp_path, "while the parent lives")
    holder.kill()
    holder.wait()
    locks.release(locks.acquire(tmp_path, "the worker still sleeps; the lock is free"))
