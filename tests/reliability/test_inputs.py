"""Input that is not what it claims to be gets one line naming the path, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

MLREC = str(Path(sys.executable).parent / "mlrec")


def mlrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MLREC, *args], capture_output=True, text=True, timeout=600, check=False)


def test_a_news_file_that_is_a_folder_is_named(tmp_path):
    run = tmp_path / "run"
    assert mlrec("data", "--config", str(TINY), f"run_dir={run}").returncode == 0
    news = run / "corpus" / "news" / "en.tsv"
    news.unlink()
    news.mkdir()
    done = mlrec("shard", "--config", str(TINY), f"run_dir={run}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{news} is a folder: a news file must be a TSV file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "spelling", ["+{}", "{}_0", "\u0661{}"], ids=["plus", "underscore", "arabic"]
)
def test_an_impression_id_int_would_read_as_another_is_refused(tmp_path, spelling):
    """int() reads "+5" as 5 and "١" as 1: two rows would share a name in the shards (the tar's
    duplicate member broke training mid-run) while the repeated-id check saw two ids."""
    run = tmp_path / "run"
    assert mlrec("data", "--config", str(TINY), f"run_dir={run}").returncode == 0
    behaviors = run / "corpus" / "train" / "behaviors.tsv"
    lines = behaviors.read_text(encoding="utf-8").splitlines()
    first_id = lines[0].split("\t", 1)[0]
    odd = spelling.format(first_id)
    lines[1] = odd + "\t" + lines[1].split("\t", 1)[1]
    behaviors.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = mlrec("shard", "--config", str(TINY), f"run_dir={run}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{behaviors}:2: impression id {odd!r} is not a non-negative integer" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("split", ["train", "dev"])
def test_a_split_left_with_no_usable_impression_stops_sharding(tmp_path, split):
    """An empty training file, or a dev split whose rows all have no click (skipped and counted
    under data.on_error=skip), passed `shard` and crashed training or evaluation later."""
    run = tmp_path / "run"
    assert mlrec("data", "--config", str(TINY), f"run_dir={run}").returncode == 0
    behaviors = run / "corpus" / split / "behaviors.tsv"
    if split == "train":
        behaviors.write_text("")
    else:
        text = behaviors.read_text(encoding="utf-8")
        behaviors.write_text(text.replace("-1 ", "-0 ").replace("-1\n", "-0\n"), encoding="utf-8")
    done = mlrec("shard", "--config", str(TINY), f"run_dir={run}", "data.on_error=skip")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{behaviors}: no usable impression ({split} split)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (run / "shards" / "manifest.json").exists()
