"""The exported encoders as ONNX models (dynamic batch and sequence axes) and their int8 versions.

  onnx/item_encoder.onnx        input_ids, attention_mask (int64 [batch, tokens]) -> vectors
  onnx/user_encoder.onnx        history (float32 [batch, clicks, dim]), mask (int64) -> vectors
  onnx/*.int8.onnx              the same after ONNX Runtime dynamic quantization (int8 weights)

Both are traced from the model `load_export` rebuilds from the saved safetensors, so the ONNX
models are checked against exactly what the Hugging Face export holds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from mlrec.export.backends import onnx_path
from mlrec.export.hf import load_export

log = logging.getLogger(__name__)

OPSET = 18


class _ItemGraph(nn.Module):
    def __init__(self, item_encoder: nn.Module) -> None:
        super().__init__()
        self.item_encoder = item_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.item_encoder(input_ids, attention_mask)


class _UserGraph(nn.Module):
    # The mask is int64 like attention_mask (bool inputs are awkward in most serving clients).
    def __init__(self, user_encoder: nn.Module) -> None:
        super().__init__()
        self.user_encoder = user_encoder

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.user_encoder(history, mask != 0)


def _export(module: nn.Module, args: tuple, names: list[str], axes: list[str], out: Path) -> None:
    dims = {name: torch.export.Dim(name) for name in axes}
    # Both inputs share their leading axes; the history's feature axis (the width) stays fixed.
    shapes = {name: {i: dims[axis] for i, axis in enumerate(axes)} for name in names}
    # The exporter prints its progress and warns about transformers internals: not for users.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            args,
            input_names=names,
            output_names=["vectors"],
            dynamic_shapes=shapes,
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))


def export_onnx(export_dir: str | Path) -> dict[str, Path]:
    """Write the fp32 and int8 ONNX models of an export; returns their paths."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, _, _ = load_export(export_dir)
    dim = model.item_encoder.dim
    # Example inputs with distinct sizes on every dynamic axis, so none gets fixed by accident.
    ids = torch.full((3, 7), 5, dtype=torch.long)
    _export(
        _ItemGraph(model.item_encoder),
        (ids, torch.ones_like(ids)),
        ["input_ids", "attention_mask"],
        ["batch", "tokens"],
        onnx_path(export_dir, "item", "fp32"),
    )
    history = torch.randn(3, 5, dim)
    _export(
        _UserGraph(model.user_encoder),
        (history, torch.ones(3, 5, dtype=torch.long)),
        ["history", "mask"],
        ["batch", "clicks"],
        onnx_path(export_dir, "user", "fp32"),
    )
    paths = {}
    for tower in ("item", "user"):
        fp32, int8 = onnx_path(export_dir, tower, "fp32"), onnx_path(export_dir, tower, "int8")
        logging.disable(logging.INFO)  # the quantizer logs every node it skips at INFO
        try:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        paths[f"{tower}_fp32"], paths[f"{tower}_int8"] = fp32, int8
    log.info("ONNX models (fp32 and int8) in %s", fp32.parent)
    return paths
