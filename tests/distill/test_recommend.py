"""Recommendation distillation: the loss terms, a frozen teacher, online == offline teacher
outputs, the real `mlrec distill` command, and two processes under accelerate launch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlrec.config import DistillConfig
from mlrec.distill.recommend import Distiller, cache_teacher, distillation_loss
from tests.conftest import TINY, tiny_config
from tests.export.tiny_export import make_export

MLREC = str(Path(sys.executable).parent / "mlrec")
# a narrower student than the tiny teacher (32): its vectors go through a learned projection
STUDENT = [
    "model.hidden_size=16",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "model.user_heads=2",
    "train.steps=4",
    "train.warmup_steps=1",
    "train.log_every=2",
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_shards) -> Path:
    return make_export(tmp_path_factory.mktemp("teacher"), tiny_shards, onnx=False)


def _cfg(run: Path, shards: Path, teacher: Path, *extra: str):
    return tiny_config(
        run, f"data.shards_dir={shards}", f"distill.teacher={teacher}", *STUDENT, *extra
    )


def test_loss_terms():
    cfg = DistillConfig(temperature=2.0)
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.zeros(2, dtype=torch.long)
    same = distillation_loss(teacher.clone(), teacher, labels, cfg)
    assert same["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert same["hard"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(teacher, labels).item()
    )
    student = torch.zeros(2, 3, requires_grad=True)
    parts = distillation_loss(student, teacher, labels, cfg)
    p = torch.softmax(teacher / 2, -1)
    expected = (p * (p.log() - torch.log(torch.full_like(p, 1 / 3)))).sum(-1).mean() * 4
    assert parts["kl"].item() == pytest.approx(expected.item(), rel=1e-5)
    parts["kl"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distiller_trains_the_student_only(tmp_path, tiny_shards, teacher):
    cfg = _cfg(tmp_path, tiny_shards, teacher)
    distiller = Distiller(cfg)
    try:
        frozen = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
        in_optimizer = {id(p) for g in distiller.optimizer.param_groups for p in g["params"]}
        assert not in_optimizer & {id(p) for p in distiller.teacher.parameters()}
        head = distiller.recommender.head
        assert head is not None and head.weight.shape == (32, 16)
        assert id(head.weight) in in_optimizer
        head_before = head.weight.detach().clone()
        metrics = distiller.train()
    finally:
        distiller.close()
    assert not distiller.teacher.training
    for k, v in distiller.teacher.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert not torch.equal(head.weight.detach(), head_before)  # the projection learned
    assert set(distiller.parts) == {"hard", "kl", "mse"}
    assert 0 < metrics["overall"]["auc"] <= 1
    marker = json.loads((tmp_path / "distill.json").read_text())
    assert marker["teacher"]["path"] == str(teacher.resolve()) and marker["mode"] == "online"


def test_offline_teacher_outputs_equal_online(tmp_path, tiny_shards, teacher):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    cfg = _cfg(tmp_path / "run", shards, teacher)
    cache_teacher(cfg)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["teacher"]["path"] == str(teacher.resolve())
    online = Distiller(cfg)
    offline = Distiller(_cfg(tmp_path / "run2", shards, teacher, "distill.mode=offline"))
    try:
        assert offline.teacher is None  # nothing of the teacher in memory
        batch = next(online.batches())
        for a, b in zip(online.teacher_outputs(batch), offline.teacher_outputs(batch), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        # pure soft-label training works from the cache alone
        offline.cfg.distill.w_hard = 0.0
        loss = offline.compute_loss(batch)
        assert torch.isfinite(loss) and offline.parts["kl"] > 0
    finally:
        online.close()
        offline.close()


def test_in_batch_negatives_distil_over_the_whole_batch(tmp_path, tiny_shards, teacher):
    """train.in_batch_negatives: student and teacher both score every candidate of the batch,
    and the hard label is each row's own positive among them."""
    distiller = Distiller(_cfg(tmp_path, tiny_shards, teacher, "train.in_batch_negatives=true"))
    try:
        batch = next(distiller.batches())
        rows, per_row = batch["candidates"].shape
        t_scores, t_items, t_users = distiller.teacher_outputs(batch, in_batch=True)
        assert t_scores.shape == (rows, rows * per_row)
        own, _, _ = distiller.teacher_outputs(batch)  # each row's own candidates, in order
        for b in range(rows):
            torch.testing.assert_close(t_scores[b, b * per_row : (b + 1) * per_row], own[b])
        loss = distiller.compute_loss(batch)
        assert torch.isfinite(loss) and distiller.parts["kl"] > 0
        in_batch_hard = distiller.parts["hard"]
        distiller.cfg.train.in_batch_negatives = False
        distiller.compute_loss(batch)
        assert distiller.parts["hard"] < in_batch_hard  # more negatives: a harder task
    finally:
        distiller.close()


@pytest.mark.slow
def test_mlrec_distill_command_and_evaluate(tmp_path, tiny_shards, teacher):
    args = [
        "--config",
        str(TINY),
        f"run_dir={tmp_path}",
        f"data.shards_dir={tiny_shards}",
        f"distill.teacher={teacher}",
        *STUDENT,
    ]
    env = os.environ.copy()
    out = subprocess.run([MLREC, "distill", *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    first = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # a distilled run's checkpoint (with its projection head) evaluates like any run
    (tmp_path / "eval" / "metrics.json").unlink()
    out = subprocess.run([MLREC, "evaluate", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["overall"]["auc"] == pytest.approx(first["overall"]["auc"], abs=1e-6)
    bad = subprocess.run(
        [MLREC, "distill", *args[: -len(STUDENT)], "distill.mode=offline"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--cache-teacher" in bad.stderr


@pytest.mark.multiproc
def test_two_processes_under_accelerate_launch(tmp_path, tiny_shards, teacher):
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "mlrec.cli", "distill", "--config", str(TINY), f"run_dir={tmp_path}",
        f"data.shards_dir={tiny_shards}", f"distill.teacher={teacher}", *STUDENT,
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    state = json.loads(
        (tmp_path / "checkpoints" / "step-00000004" / "trainer_state.json").read_text()
    )
    assert state["world_size"] == 2
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"]["impressions"]


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_distills_with_a_frozen_teacher(stage, tmp_path, tiny_shards, teacher):
    """DeepSpeed ZeRO-2/3, 2 processes on CPU: only the student is in the engine."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the dev extra")
    from tests.conftest import REPO

    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "launch" / "accelerate" / f"deepspeed_zero{stage}.yaml"), "--num_processes",
        "2", "--main_process_port", str(29560 + stage), "-m", "mlrec.cli", "distill",
        "--config", str(TINY),
        f"run_dir={tmp_path}", f"data.shards_dir={tiny_shards}", f"distill.teacher={teacher}",
        *STUDENT,
    ]  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "checkpoints" / "step-00000004" / "pytorch_model").is_dir()  # DeepSpeed's
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"]["impressions"]
