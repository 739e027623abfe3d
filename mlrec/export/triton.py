"""A Triton Inference Server model repository for the ONNX encoders of an export.

  triton/item_encoder/config.pbtxt        triton/item_encoder_int8/config.pbtxt
  triton/item_encoder/1/model.onnx        triton/item_encoder_int8/1/model.onnx
  triton/user_encoder/...                 triton/user_encoder_int8/...

`tritonserver --model-repository EXPORT/triton` serves all four. Shapes leave out the batch axis
(max_batch_size > 0 lets Triton's dynamic batcher stack requests); -1 marks the variable axes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mlrec.export.backends import onnx_path

TRITON_DIR = "triton"
MAX_BATCH_SIZE = 64


def _config(name: str, inputs: list[tuple[str, str, list[int]]], dim: int) -> str:
    entries = ",\n".join(
        f'  {{ name: "{n}" data_type: {t} dims: [ {", ".join(map(str, d))} ] }}'
        for n, t, d in inputs
    )
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        f"input [\n{entries}\n]\n"
        f'output [\n  {{ name: "vectors" data_type: TYPE_FP32 dims: [ {dim} ] }}\n]\n'
        "dynamic_batching { }\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )


def write_triton_repository(export_dir: str | Path, dim: int) -> Path:
    """Copy the ONNX models into a versioned Triton repository with one config.pbtxt each."""
    root = Path(export_dir) / TRITON_DIR
    models = {
        "item_encoder": (
            "item",
            [("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])],
        ),
        "user_encoder": (
            "user",
            [("history", "TYPE_FP32", [-1, dim]), ("mask", "TYPE_INT64", [-1])],
        ),
    }
    for base, (tower, inputs) in models.items():
        for precision, suffix in (("fp32", ""), ("int8", "_int8")):
            name = base + suffix
            version = root / name / "1"
            version.mkdir(parents=True, exist_ok=True)
            shutil.copy(onnx_path(export_dir, tower, precision), version / "model.onnx")
            (root / name / "config.pbtxt").write_text(_config(name, inputs, dim))
    return root
