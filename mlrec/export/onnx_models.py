"""The exported encoders as ONNX models (dynamic batch and sequence axes) and their int8 versions.

  onnx/item_encoder.onnx        input_ids, attention_mask (int64 [batch, tokens]) -> vectors
  onnx/user_encoder.onnx        history (float32 [batch, clicks, dim]), mask (int64) -> vectors
  onnx/*.int8.onnx              the same after ONNX Runtime dynamic quantization (int8 weights)

Both are traced from the model `load_export` rebuilds from the saved safetensors, so the ONNX
models are checked against exactly what the Hugging Face export holds. The fp32 models hold
standard ONNX operators only (any runtime); the int8 item encoder, which needs ONNX Runtime's
quantized operators anyway, is first fused by ONNX Runtime's transformer optimizer (bias + GELU;
not residual + LayerNorm, see backends.py) so fewer fp32 passes run between the int8 matrix
products.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from mlrec.config import ConfigError
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


def _fused(fp32: Path, config, out: Path) -> Path:
    """The item encoder after ONNX Runtime's transformer fusions, or `fp32` itself for an
    architecture they do not know (the int8 model is then quantized unfused)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, width = config.num_attention_heads, config.hidden_size
    options = FusionOptions("bert")
    # ONNX Runtime's CPU SkipLayerNormalization ran slower than Add + LayerNormalization (see
    # mlrec.export.backends.SESSION_DISABLED_FUSIONS)
    options.enable_skip_layer_norm = False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            fused = optimize_model(
                str(fp32), "bert", num_heads=heads, hidden_size=width, optimization_options=options
            )
    except Exception as err:  # any failure leaves the plain model, which works
        log.warning("ONNX Runtime fusions skipped for %s: %s", fp32.name, err)
        return fp32
    fused.save_model_to_file(str(out))
    counts = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    log.info("item encoder fused for int8: %s", counts)
    return out


def export_onnx(export_dir: str | Path, trust_remote_code: bool = False) -> dict[str, Path]:
    """Write the fp32 and int8 ONNX models of an export; returns their paths."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, _, _ = load_export(export_dir, trust_remote_code)
    if model.item_encoder.decoder is not None:
        # the rows are right-aligned and EOS appended where missing before the model runs
        # (mlrec.models.decoders): data-dependent shapes, which a traced graph would fix to the
        # example's
        raise ConfigError(
            f"export.onnx: {export_dir} holds a decoder-only item encoder "
            f"({model.item_encoder.backbone.config.model_type}); mlrec exports ONNX for "
            "BERT-family encoders only. Set export.onnx=false: the Hugging Face export is complete"
        )
    backbone = model.item_encoder.backbone
    # Traced attention as explicit matmul/softmax: the optimizer recognises that pattern, not
    # the decomposed scaled_dot_product_attention (the parity check holds both to torch).
    backbone.set_attn_implementation("eager")
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
        source = fp32
        if tower == "item":
            source = _fused(fp32, backbone.config, int8.with_suffix(".fused.onnx"))
        # the quantizer logs every node it skips, and warns on the root logger to pre-process
        logging.disable(logging.WARNING)
        try:
            # fused operators have no ONNX shape inference: their outputs are float
            quantize_dynamic(
                str(source),
                str(int8),
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            logging.disable(logging.NOTSET)
            if source != fp32:
                source.unlink(missing_ok=True)
        paths[f"{tower}_fp32"], paths[f"{tower}_int8"] = fp32, int8
    log.info("ONNX models (fp32 and int8) in %s", fp32.parent)
    return paths
