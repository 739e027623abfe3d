import subprocess
import sys
from pathlib import Path

import pytest

from mlrec.cli import STAGES, main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for stage in ("quickstart", "data", "shard", "train", "evaluate", "export"):
        assert stage in out and stage in STAGES


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as info:
        main([stage, "--help"])
    assert info.value.code == 0
    # `report` reads finished runs (RUN_DIR...), every other stage takes a config
    assert ("RUN_DIR" if stage == "report" else "--config") in capsys.readouterr().out


def test_bad_config_exits_2_naming_the_key(capsys, tmp_path):
    assert main(["train", f"run_dir={tmp_path}", "train.lr=-0.1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "must be > 0" in err
    assert not (tmp_path / "config.yaml").exists()  # stopped before any work


def test_console_script_and_module_entry_points():
    script = str(Path(sys.executable).parent / "mlrec")  # installed by `pip install -e .`
    for cmd in ([script, "--help"], [sys.executable, "-m", "mlrec", "train", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout
