"""End to end through the real `mlrec` command on the tiny debug config."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModel

from tests.conftest import TINY, tiny_config

MLREC = str(Path(sys.executable).parent / "mlrec")


def run_mlrec(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [MLREC, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    out = run_mlrec("quickstart", "--config", str(TINY), f"run_dir={run}")
    assert "Held-out evaluation" in out.stdout and "overall" in out.stdout
    return run


def test_run_directory_holds_everything(tiny_run):
    saved = (tiny_run / "config.yaml").read_text()
    assert f"run_dir: {tiny_run}" in saved and "steps: 20" in saved
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    keys = {"auc", "mrr", "ndcg@5", "ndcg@10", "impressions", "read", "scored", "unscored"}
    assert set(metrics["overall"]) == keys
    assert set(metrics["by_language"]) == {"en", "de", "ru", "ar", "zh", "ja"}
    assert all(set(row) == keys for row in metrics["by_language"].values())
    assert (
        sum(r["impressions"] for r in metrics["by_language"].values())
        == (metrics["overall"]["impressions"])
    )
    assert (tiny_run / "checkpoints" / "step-00000020" / "trainer_state.json").is_file()


def test_tensorboard_events_read_back(tiny_run):
    loss = scalars(tiny_run / "tb", "train/loss")
    assert sorted(loss) == [5, 10, 15, 20]
    assert all(0 < v < 10 for v in loss.values())
    for tag in ("train/lr", "train/grad_norm", "train/samples_per_s", "train/tokens_per_s"):
        assert len(scalars(tiny_run / "tb", tag)) == 4
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    auc = scalars(tiny_run / "tb", "eval/overall/auc")
    assert auc[20] == pytest.approx(metrics["overall"]["auc"])
    assert 20 in scalars(tiny_run / "tb", "eval/zh/ndcg@10")


def test_export_loads_in_transformers_and_scores_like_the_trained_model(tiny_run):
    from mlrec.data.loader import train_loader
    from mlrec.export.hf import load_export
    from mlrec.train.trainer import Trainer

    export = tiny_run / "export"
    plain = AutoModel.from_pretrained(str(export))
    assert plain.config.model_type == "xlm-roberta"
    assert not any("lora" in name for name, _ in plain.named_parameters())

    cfg = tiny_config(tiny_run)
    trainer = Trainer(cfg)
    try:
        assert trainer.restore("latest")
        trained = trainer.recommender.eval()
        exported, _, _ = load_export(export)
        batch = next(
            iter(
                train_loader(
                    cfg.shards_dir, batch_size=8, negatives=4, max_history=10, seed=1, num_workers=0
                )
            )
        )
        args = [
            batch[k] for k in ("item_ids", "item_mask", "history", "history_mask", "candidates")
        ]
        with torch.no_grad():
            torch.testing.assert_close(exported(*args), trained(*args), rtol=1e-4, atol=1e-4)
    finally:
        trainer.close()


def test_resume_gives_identical_losses(tmp_path):
    """2N steps straight == N steps, stop, resume, N steps (losses, then the evaluation)."""
    common = [
        "--config",
        str(TINY),
        "train.steps=8",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.checkpoint_every=4",
        "train.keep_last=3",
    ]
    straight = tmp_path / "straight"
    run_mlrec("shard", "--config", str(TINY), f"run_dir={straight}")
    run_mlrec("train", *common, f"run_dir={straight}")
    resumed = tmp_path / "resumed"
    shutil.copytree(
        straight / "checkpoints" / "step-00000004", resumed / "checkpoints" / "step-00000004"
    )
    run_mlrec(
        "train",
        *common,
        f"run_dir={resumed}",
        f"data.shards_dir={straight / 'shards'}",
        "train.resume=latest",
    )
    a = scalars(straight / "tb", "train/loss")
    b = scalars(resumed / "tb", "train/loss")
    assert sorted(b) == [5, 6, 7, 8]
    assert [a[s] for s in b] == [b[s] for s in sorted(b)]
    assert (straight / "eval" / "metrics.json").read_text() == (
        resumed / "eval" / "metrics.json"
    ).read_text()


@pytest.mark.multiproc
def test_two_processes_train_and_evaluate_like_one(tmp_path):
    run = tmp_path / "ddp"
    run_mlrec("shard", "--config", str(TINY), f"run_dir={run}")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
        "-m",
        "mlrec",
        "train",
        "--config",
        str(TINY),
        f"run_dir={run}",
        "train.steps=10",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    two = json.loads((run / "eval" / "metrics.json").read_text())
    state = json.loads((run / "checkpoints" / "step-00000010" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert state["samples_seen"] == 2 * 10 * 16  # both ranks' batches counted
    # the same checkpoint evaluated by one process gives the same numbers
    (run / "eval" / "metrics.json").unlink()
    run_mlrec("evaluate", str(run))
    one = json.loads((run / "eval" / "metrics.json").read_text())
    assert one["overall"]["impressions"] == two["overall"]["impressions"]
    for lang, row in two["by_language"].items():
        for key, value in row.items():
            assert one["by_language"][lang][key] == pytest.approx(value, abs=1e-5)


def test_checkpointing_in_batch_negatives_and_bf16_train(tmp_path, tiny_shards):
    """Recomputing activations changes memory, not maths: the same losses step for step."""
    common = [
        "--config",
        str(TINY),
        f"data.shards_dir={tiny_shards}",
        "train.steps=3",
        "train.log_every=1",
        "model.dropout=0.0",
    ]
    plain, ckpt, in_batch = tmp_path / "plain", tmp_path / "ckpt", tmp_path / "in_batch"
    bf16 = tmp_path / "bf16"
    run_mlrec("train", *common, f"run_dir={plain}")
    run_mlrec("train", *common, f"run_dir={ckpt}", "train.gradient_checkpointing=true")
    run_mlrec("train", *common, f"run_dir={in_batch}", "train.in_batch_negatives=true")
    a, b = scalars(plain / "tb", "train/loss"), scalars(ckpt / "tb", "train/loss")
    assert [b[s] for s in sorted(b)] == pytest.approx([a[s] for s in sorted(a)], rel=1e-5)
    # a harder task: each positive also competes with the whole batch's candidates
    c = scalars(in_batch / "tb", "train/loss")
    assert c[1] > a[1]
    # bf16 autocast (CPU here, GPU for users) through the NRMS user encoder's masked attention
    run_mlrec("train", *common, f"run_dir={bf16}", "train.mixed_precision=bf16")
    d = scalars(bf16 / "tb", "train/loss")
    assert [d[s] for s in sorted(d)] == pytest.approx([a[s] for s in sorted(a)], rel=0.05)
