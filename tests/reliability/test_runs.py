"""Runs that would be lost or mislabelled: a diverged loss, a checkpoint that cannot be fully
restored, a run directory already used by another run (concurrent runs: test_locks.py)."""

import pytest

from tests.conftest import TINY


def test_a_diverged_loss_stops_the_run_before_anything_is_saved(tmp_path, tiny_shards, capsys):
    """train.lr=inf ran to the end with NaN losses, reported AUC 0.0000, then export died."""
    from mlrec.cli import main

    run = tmp_path / "nan"
    argv = ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={tiny_shards}"]
    assert main([*argv, "train.lr=inf"]) == 2
    assert "training diverged" in capsys.readouterr().err
    assert not (run / "checkpoints").exists() and not (run / "eval").exists()


@pytest.mark.parametrize("damage", ["empty rng", "truncated weights"])
def test_a_checkpoint_that_cannot_be_fully_restored_is_an_error(
    damage, tmp_path, tiny_shards, capsys
):
    """An emptied RNG state file: resume went on without restoring the RNG (an INFO line), so
    it was no longer exact; a truncated model.safetensors gave a raw traceback."""
    from mlrec.cli import main

    run = tmp_path / "run"
    argv = ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={tiny_shards}"]
    assert main([*argv, "train.steps=4", "train.warmup_steps=1"]) == 0
    checkpoint = run / "checkpoints" / "step-00000004"
    if damage == "empty rng":
        (checkpoint / "random_states_0.pkl").write_bytes(b"")
    else:
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert main([*argv, "train.steps=6", "train.warmup_steps=1", "train.resume=latest"]) == 2
    err = capsys.readouterr().err
    assert str(checkpoint) in err and "resume from an earlier checkpoint" in err
    assert "Traceback" not in err


def test_a_used_run_directory_is_refused_unless_resumed_or_overwritten(
    tmp_path, tiny_shards, capsys
):
    """Re-running train in a used run directory retrained, the rotation (sorting both runs'
    checkpoints) deleted the new ones, and evaluate then reported the old run."""
    from mlrec.cli import main

    run = tmp_path / "run"
    argv = ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={tiny_shards}"]
    assert main([*argv, "train.steps=6", "train.warmup_steps=1"]) == 0
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*argv, "train.steps=4", "train.warmup_steps=1", "train.lr=1e-4"]) == 2
    assert "holds checkpoints of an earlier run (step-00000006)" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before  # nothing of the refused run written
    over = [*argv, "train.steps=4", "train.warmup_steps=1", "train.overwrite=true"]
    assert main(over) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000004"]
    assert "steps: 4" in (run / "config.yaml").read_text()
