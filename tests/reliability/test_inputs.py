"""Input that is not what it claims to be gets one line naming the path, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
