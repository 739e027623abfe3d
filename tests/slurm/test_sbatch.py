"""The sbatch scripts run for real under a fake SLURM (tests/slurm/fake_slurm.py): the exact
launcher command of every node, the requeue after a time-limit warning, the dependent job."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.slurm.fake_slurm import FakeCluster

JOB_ID = "4242"
HOSTS = ["gpu-a017", "gpu-a018", "gpu-b003", "gpu-b004"]


@pytest.fixture
def cluster(tmp_path) -> FakeCluster:
    return FakeCluster(tmp_path / "cluster")


def job_env(cluster: FakeCluster, **extra: str) -> dict[str, str]:
    """What SLURM sets in a 4-node batch job's shell (which runs on the first node)."""
    return cluster.env(
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NODELIST="gpu-a[017-018],gpu-b[003-004]",
        SLURM_NNODES=str(len(HOSTS)),
        SLURM_NODEID="0",
        SLURM_GPUS_ON_NODE="8",
        SLURM_SUBMIT_DIR=str(REPO),
        FAKE_HOSTS=" ".join(HOSTS),
        FAKE_GPUS="8",
        **extra,
    )


def train_command(node: int, *overrides: str) -> list[str]:
    return [
        "launch",
        "--config_file",
        str(REPO / "launch" / "accelerate" / "multi_node.yaml"),
        "--num_processes",
        "32",
        "--num_machines",
        "4",
        "--machine_rank",
        str(node),
        "--main_process_ip",
        "gpu-a017",
        "--main_process_port",
        str(29500 + int(JOB_ID) % 10000),
        "-m",
        "mlrec",
        "train",
        "--config",
        "configs/debug/tiny.yaml",
        "train.resume=latest",
        *overrides,
    ]


def test_every_node_runs_one_launcher_with_its_rank(cluster):
    out = subprocess.run(
        ["bash", "slurm/train.sbatch", "train.lr=3e-4", "run_dir=runs/x"],
        cwd=REPO,
        env=job_env(cluster),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert cluster.calls("scontrol") == [["show", "hostnames", "gpu-a[017-018],gpu-b[003-004]"]]
    assert cluster.calls("srun") == [
        [
            "--ntasks-per-node=1",
            "--kill-on-bad-exit=1",
            "launch/run_train.sh",
            "train.resume=latest",
            "train.lr=3e-4",
            "run_dir=runs/x",
        ]
    ]
    launched = sorted(
        cluster.calls("accelerate"), key=lambda argv: int(argv[argv.index("--machine_rank") + 1])
    )
    assert launched == [train_command(n, "train.lr=3e-4", "run_dir=runs/x") for n in range(4)]
    for node in range(4):
        env = cluster.launcher_env(node)
        assert "SIGUSR1" in env["PET_SIGNALS_TO_HANDLE"].split(",")  # forwarded, not fatal
        assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "300"
        assert "ACCELERATE_USE_CPU" not in env  # GPUs were listed
    assert cluster.calls("scancel") == [] and cluster.calls("sbatch") == []


def test_time_limit_warning_checkpoints_and_requeues(cluster):
    job = subprocess.Popen(
        ["bash", "slurm/train.sbatch"],
        cwd=REPO,
        env=job_env(cluster, FAKE_TRAINING="preempt"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(list(cluster.dir.glob("started.*"))) < 4:
        assert job.poll() is None and time.monotonic() < deadline, "launchers did not start"
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does
    _, err = job.communicate(timeout=30)
    assert job.returncode == 75, err
    assert cluster.calls("scancel") == [["--signal=USR1", JOB_ID]]
    assert cluster.calls("scontrol")[-1] == ["requeue", JOB_ID]
    assert "requeueing job 4242" in err


@pytest.mark.parametrize("training, code", [("ok", 0), ("fail", 1)])
def test_no_requeue_without_a_warning(cluster, training, code):
    out = subprocess.run(
        ["bash", "slurm/train.sbatch"],
        cwd=REPO,
        env=job_env(cluster, FAKE_TRAINING=training),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == code, out.stderr
    assert ["requeue", JOB_ID] not in cluster.calls("scontrol")


def test_submit_chains_evaluation_and_export_after_training(cluster):
    out = subprocess.run(
        ["bash", "slurm/submit.sh", "train.lr=3e-4"],
        cwd=REPO,
        env=cluster.env(RUN_DIR="runs/xlmr", NODES="4"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert cluster.calls("sbatch") == [
        ["--parsable", "--nodes", "4", "slurm/train.sbatch", "run_dir=runs/xlmr", "train.lr=3e-4"],
        ["--parsable", "--dependency=afterok:1001", "slurm/eval_export.sbatch"],
    ]
    assert "training: job 1001; evaluation + export once it succeeds: job 1002" in out.stdout


def test_eval_export_job_evaluates_then_exports_the_run(cluster):
    env = cluster.env(
        RUN_DIR="runs/xlmr", SLURM_JOB_ID="77", SLURM_NNODES="1", SLURM_SUBMIT_DIR=str(REPO)
    )
    out = subprocess.run(
        ["bash", "slurm/eval_export.sbatch", "eval.batch_size=64"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert cluster.calls("mlrec") == [
        ["evaluate", "runs/xlmr", "eval.batch_size=64"],
        ["export", "runs/xlmr", "eval.batch_size=64"],
    ]
    del env["RUN_DIR"]
    out = subprocess.run(
        ["bash", "slurm/eval_export.sbatch"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode != 0 and "set RUN_DIR" in out.stderr
