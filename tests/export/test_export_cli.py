"""`mlrec export RUN_DIR` end to end: Hugging Face + ONNX + parity (+ Triton), and loud failure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mlrec.cli import main
from tests.conftest import TINY

MLREC = str(Path(sys.executable).parent / "mlrec")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_shards) -> Path:
    run = tmp_path_factory.mktemp("run")
    args = ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={tiny_shards}"]
    args += ["train.steps=2", "train.warmup_steps=0", "train.log_every=1"]
    out = subprocess.run(
        [MLREC, *args], capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return run


def test_export_writes_checked_onnx_and_a_triton_repository(trained_run):
    index = "export.index.kind=ivfpq"
    assert main(["export", str(trained_run), "export.triton=true", index]) == 0
    export = trained_run / "export"
    report = json.loads((export / "onnx" / "parity.json").read_text())
    assert report["passed"] and report["held_out"]["impressions"] == 200
    # the ANN index over the catalog vectors, with its recall against exact search
    assert report["index"]["kind"] == "ivfpq" and report["index"]["users"] == 200
    assert 0 < report["index"]["recall@10"] <= 1 and 0 < report["index"]["recall@100"] <= 1
    assert (export / "catalog" / "ann" / "onnx" / "all.faiss").is_file()
    assert json.loads((export / "catalog" / "popularity.json").read_text())["clicks"]
    assert "| **overall** | 200 |" in (export / "README.md").read_text()  # the run's metrics
    # the catalog, embedded once by the backend `mlrec serve` will run (serve.backend)
    vectors = np.load(export / "catalog" / "vectors.onnx.npy", allow_pickle=False)
    rows = (export / "catalog" / "index.tsv").read_text().count("\n")
    assert vectors.shape == (rows, report["dim"]) and np.isfinite(vectors).all()
    record = json.loads((export / "catalog" / "vectors.onnx.json").read_text())
    assert record["backend"] == "onnx" and record["rows"] == rows

    triton = export / "triton"
    assert sorted(p.name for p in triton.iterdir()) == [
        "item_encoder",
        "item_encoder_int8",
        "user_encoder",
        "user_encoder_int8",
    ]
    for name in ("item_encoder", "item_encoder_int8", "user_encoder", "user_encoder_int8"):
        assert sorted(p.name for p in (triton / name).iterdir()) == ["1", "config.pbtxt"]
        model = onnx.load(str(triton / name / "1" / "model.onnx"))
        config = (triton / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config and 'platform: "onnxruntime_onnx"' in config
        for tensor in [*model.graph.input, *model.graph.output]:
            assert f'name: "{tensor.name}"' in config  # the tensor names Triton will bind
    item = (triton / "item_encoder" / "config.pbtxt").read_text()
    assert 'name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ]' in item
    assert f"dims: [ {report['dim']} ]" in item
    user = (triton / "user_encoder" / "config.pbtxt").read_text()
    assert f'name: "history" data_type: TYPE_FP32 dims: [ -1, {report["dim"]} ]' in user


def test_export_exits_non_zero_when_the_onnx_model_is_wrong(trained_run, monkeypatch, capsys):
    from mlrec.export import onnx_models

    # A plausible export bug: the user tower's graph returns the wrong vector.
    monkeypatch.setattr(
        onnx_models._UserGraph,
        "forward",
        lambda self, history, mask: self.user_encoder(history, mask != 0).flip(-1),
    )
    assert main(["export", str(trained_run), "export.dir=" + str(trained_run / "bad")]) == 3
    err = capsys.readouterr().err
    assert "ONNX parity check failed" in err and "fp32: minimum cosine" in err
    # a model that fails its check is not published where serving would pick it up
    assert not (trained_run / "bad").exists() and "kept for inspection in" in err
    report = json.loads((trained_run / "bad.rejected" / "onnx" / "parity.json").read_text())
    assert not report["passed"] and report["fp32"]["user_cosine_min"] < 0.999
