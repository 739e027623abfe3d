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


def test_a_missing_extra_is_named_before_any_work(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    assert main(["serve", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "mlrec serve needs fastapi (the serve extra): pip install 'mlrec[serve]'" in err
    assert not any(tmp_path.iterdir())  # nothing was started or written


def test_overrides_may_follow_options(capsys, tmp_path):
    # argparse's positional slot takes no key=value after an option; the cli does
    argv = ["evaluate", str(tmp_path), "--out", str(tmp_path / "o"), "eval.max_impressions=5"]
    assert main(argv) == 2
    assert "config.yaml not found" in capsys.readouterr().err  # got past argument parsing
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path), "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
