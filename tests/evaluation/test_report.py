"""`mlrec report`: the per-language table and the charts, from real run folders' files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

MLREC = str(Path(sys.executable).parent / "mlrec")


def _run(root: Path, name: str, auc: dict, retrieval: dict | None = None) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    row = {"mrr": 0.5, "ndcg@5": 0.6, "ndcg@10": 0.7, "impressions": 10}
    metrics = {
        "overall": {**row, "auc": sum(auc.values()) / len(auc)},
        "by_language": {lang: {**row, "auc": v} for lang, v in auc.items()},
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    if retrieval:
        (run / "eval" / "retrieval.json").write_text(json.dumps(retrieval))
    return run


def test_report_compares_runs(tmp_path):
    pytest.importorskip("matplotlib", reason="charts need mlrec[xling]")
    base = _run(tmp_path, "baseline", {"en": 0.8, "de": 0.61})
    aligned = _run(
        tmp_path,
        "aligned",
        {"en": 0.79, "de": 0.7531},
        {"student": {"de": 0.42, "mean": 0.42}, "teacher": {"de": 0.95, "mean": 0.95}},
    )
    out = subprocess.run(
        [MLREC, "report", str(base), str(aligned), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| baseline | 0.6100 | 0.8000 |" in text
    assert "| aligned | 0.7531 | 0.7900 |" in text
    assert "| aligned (teacher) | 0.9500 | 0.9500 |" in text
    for png in ("auc.png", "ndcg_at_10.png", "retrieval.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert f"]({png})" in text
    missing = subprocess.run(
        [MLREC, "report", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "eval/metrics.json" in missing.stderr
