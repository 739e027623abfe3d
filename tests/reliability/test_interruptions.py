"""Stopping on a signal, for real: a training process gets SIGUSR1 (SLURM's time-limit warning)
or SIGTERM mid-run, checkpoints at the next step boundary, exits 75, and the resumed run ends
exactly like an uninterrupted one; kill -9 loses only the steps since the last complete
checkpoint; with two ranks, a signal to one of them stops both after the same step."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlrec.runs import STATE_FILE, checkpoint_dirs, latest_checkpoint
from mlrec.train.signals import EXIT_PREEMPTED, StopSignals
from tests.conftest import REPO, TINY

BIN = Path(sys.executable).parent
STEPS = 12
COMMON = [
    f"train.steps={STEPS}",
    "train.warmup_steps=2",
    "train.log_every=1",  # every step's loss is compared
    "train.checkpoint_every=3",
    "train.keep_last=10",
]


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def mlrec_train(run: Path, shards: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "mlrec"), "train", "--config", str(TINY), f"run_dir={run}"]
    cmd += [f"data.shards_dir={shards}", *COMMON, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())


def start_run_train(run: Path, shards: Path, log: Path, *overrides: str, **extra: str):
    """launch/run_train.sh in the background, its output in `log`."""
    args = [f"run_dir={run}", f"data.shards_dir={shards}", *COMMON, *overrides]
    with log.open("w") as out:
        return subprocess.Popen(
            [str(REPO / "launch" / "run_train.sh"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(CONFIG=str(TINY), **extra),
        )


def wait_for_step(proc: subprocess.Popen, log: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while f"step {step}/{STEPS}" not in log.read_text():
        assert proc.poll() is None, f"exited {proc.returncode} early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no step {step} logged:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def losses(run: Path) -> dict[int, float]:
    """train/loss by step as TensorBoard shows it: a restarted run's steps replace the ones the
    killed run had logged past its last checkpoint (the accumulator purges them)."""
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


@pytest.fixture(scope="module")
def straight(tiny_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight")
    out = mlrec_train(run, tiny_shards)
    assert out.returncode == 0, out.stderr[-4000:]
    return run


def test_stop_signals_record_and_restore_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    stop = StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the handler
        os.kill(os.getpid(), signal.SIGUSR1)

        class One:
            num_processes = 1

        assert stop.requested(One()) and stop.signal_name == "SIGTERM"  # the first one counts
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_checkpoints_exits_75_and_resume_matches_uninterrupted(
    straight, tiny_shards, tmp_path, sig
):
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_run_train(run, tiny_shards, log)  # one process: run_train.sh execs the trainer
    wait_for_step(proc, log, 4)
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == EXIT_PREEMPTED, log.read_text()[-3000:]
    stopped = latest_checkpoint(run / "checkpoints")
    assert stopped is not None
    step = state(stopped)["step"]
    assert 4 <= step < STEPS and stopped.name == f"step-{step:08d}"
    assert f"stopped on {sig.name} after step {step}" in log.read_text()
    assert not (run / "eval").exists()  # no evaluation of a half-trained model

    out = mlrec_train(run, tiny_shards, "train.resume=latest")
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"resumed from {stopped} at step {step}" in out.stderr
    assert sorted(losses(straight)) == list(range(1, STEPS + 1))
    assert losses(run) == losses(straight)  # every step, bit for bit
    assert (run / "eval" / "metrics.json").read_text() == (
        straight / "eval" / "metrics.json"
    ).read_text()


@pytest.mark.slow
def test_kill_9_resumes_from_the_last_complete_checkpoint(straight, tiny_shards, tmp_path):
    rng = random.Random()
    kill_at = rng.randint(2, STEPS - 2)
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_run_train(run, tiny_shards, log)
    wait_for_step(proc, log, kill_at)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    root = run / "checkpoints"
    for ckpt in checkpoint_dirs(root):  # every folder taken as complete is complete
        assert state(ckpt)["step"] == int(ckpt.name.removeprefix("step-")), ckpt
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "optimizer.bin").is_file()
    # what a kill mid-save leaves: a temporary folder and a step folder without its state file
    (root / ".tmp-step-00000011").mkdir(parents=True, exist_ok=True)
    (root / "step-00000011").mkdir()
    (root / "step-00000011" / "model.safetensors").write_bytes(b"half written")
    resumed_from = latest_checkpoint(root)
    expected = 0 if resumed_from is None else state(resumed_from)["step"]
    assert expected <= kill_at + 1, f"kill at step {kill_at}"

    out = mlrec_train(run, tiny_shards, "train.resume=latest")
    assert out.returncode == 0, f"kill at step {kill_at}:\n{out.stderr[-4000:]}"
    if resumed_from is not None:
        assert f"resumed from {resumed_from} at step {expected}" in out.stderr
    assert losses(run) == losses(straight), f"kill at step {kill_at}"
    assert (run / "eval" / "metrics.json").read_text() == (
        straight / "eval" / "metrics.json"
    ).read_text()
    assert state(latest_checkpoint(root))["step"] == STEPS
    assert not list(root.glob(".tmp-*"))  # the next save cleared what the kill left


# Holds a training process inside its second checkpoint write until it is killed; argv: where,
# marker file, then mlrec's own arguments.
HOLD_IN_CHECKPOINT = """
import sys, time
from pathlib import Path
where, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
import torch
from mlrec.train import checkpoint
saves = []
def hold():
    marker.touch()
    time.sleep(600)
if where == "before-rename":  # every file written, the folder not yet renamed into place
    publish = checkpoint.io.publish
    def held_publish(tmp, final):
        saves.append(final)
        if len(saves) == 2:
            hold()
        publish(tmp, final)
    checkpoint.io.publish = held_publish
else:  # optimizer.bin half-written
    save = torch.save
    def held_save(obj, f, *a, **k):
        if str(f).endswith("optimizer.bin"):
            saves.append(f)
            if len(saves) == 2:
                Path(f).write_bytes(b"half an optimizer")
                hold()
        return save(obj, f, *a, **k)
    torch.save = held_save
from mlrec.cli import main
sys.exit(main(args))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-optimizer-file", "before-rename"])
def test_kill_9_inside_a_checkpoint_write_resumes_from_the_one_before(
    straight, tiny_shards, tmp_path, where
):
    run, marker = tmp_path / "run", tmp_path / "in-checkpoint"
    train = ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={tiny_shards}"]
    cmd = [sys.executable, "-c", HOLD_IN_CHECKPOINT, where, str(marker), *train, *COMMON]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    root = run / "checkpoints"
    assert latest_checkpoint(root) == root / "step-00000003"  # step 6 was being written
    assert list(root.glob(".tmp-step-00000006"))  # ... and is left half-done, never complete

    out = mlrec_train(run, tiny_shards, "train.resume=latest")
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"resumed from {root / 'step-00000003'} at step 3" in out.stderr
    assert losses(run) == losses(straight)
    assert (run / "eval" / "metrics.json").read_text() == (
        straight / "eval" / "metrics.json"
    ).read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the processes the accelerate launcher started."""
    ranks = {}
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for pid in (task / "children").read_text().split():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            found = [v for v in environ if v.startswith(b"RANK=")]
            if found:
                ranks[int(found[0][5:])] = int(pid)
    return ranks


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads ranks from /proc")
def test_signal_to_one_rank_stops_both_after_the_same_step(tiny_shards, tmp_path):
    run, log = tmp_path / "ddp", tmp_path / "first.log"
    two = {"NGPU": "2", "MASTER_PORT": str(free_port())}
    proc = start_run_train(run, tiny_shards, log, **two)
    wait_for_step(proc, log, 3)
    ranks = rank_pids(proc.pid)  # run_train.sh exec'd accelerate: same pid
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGUSR1)  # rank 0, which writes, never sees the signal itself
    assert proc.wait(timeout=300) != 0
    text = log.read_text()
    assert text.count(f"exitcode  : {EXIT_PREEMPTED}") >= 1, text[-3000:]
    stopped = latest_checkpoint(run / "checkpoints")
    assert stopped is not None
    saved = state(stopped)
    assert 3 <= saved["step"] < STEPS and saved["world_size"] == 2
    assert f"stopped on a stop signal on another rank after step {saved['step']}" in text

    resume = start_run_train(
        run, tiny_shards, tmp_path / "second.log", "train.resume=latest", **two
    )
    assert resume.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    final = state(latest_checkpoint(run / "checkpoints"))
    assert final["step"] == STEPS and final["samples_seen"] == 2 * STEPS * 16
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    assert (run / "eval" / "metrics.json").is_file()


def test_run_logs_hparams_and_final_metrics_for_the_hparams_view(straight):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(straight / "tb"))
    acc.Reload()
    data = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(content)
        for tag, content in acc.PluginTagToContent("hparams").items()
    }
    experiment = data["_hparams_/experiment"].experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert metrics == {f"eval/overall/{m}" for m in ("auc", "mrr", "ndcg@5", "ndcg@10")}
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["train.steps"].number_value == STEPS
    assert start["train.lr"].number_value == pytest.approx(2e-3)
    assert start["adapter.method"].string_value == "lora"
    assert start["world_size"].number_value == 1
    # each metric column has the scalar it names, at the final step
    final = json.loads((straight / "eval" / "metrics.json").read_text())["overall"]
    for tag in metrics:
        (event,) = acc.Scalars(tag)
        assert event.step == STEPS and event.value == pytest.approx(final[tag.split("/")[-1]])
