"""The README's first line: `mlrec quickstart` on the built-in corpus learns and writes it all."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModel


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 3 minutes alone; far more on a machine busy with other work
def test_quickstart_learns_and_writes_everything(tmp_path):
    mlrec = str(Path(sys.executable).parent / "mlrec")
    run = tmp_path / "qs"
    out = subprocess.run(
        [mlrec, "quickstart", f"run_dir={run}"], capture_output=True, text=True, timeout=1700
    )
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["auc"] >= 0.65, metrics["overall"]
    assert len(metrics["by_language"]) == 9
    assert (run / "config.yaml").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert AutoModel.from_pretrained(str(run / "export")).config.model_type == "xlm-roberta"
    for where in ("corpus", "shards", "tb", "eval", "export"):
        assert str(run / where) in out.stdout  # it says where everything went
    assert (run / "eval" / "prediction.txt").is_file()
    # the model beside the popularity baseline, on the same impressions
    assert "against baselines" in out.stdout and "popularity" in out.stdout
    assert metrics["baselines"]["popularity"]["overall"]["read"] == metrics["overall"]["read"]
