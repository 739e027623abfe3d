"""One interface over the exported encoders, whatever runs them: torch, ONNX fp32 or ONNX int8.

The parity check compares these backends against each other and the service runs whichever the
config names, so both go through the same code: item token rows -> item vectors, and a padded
batch of histories (item vectors plus mask) -> user vectors, numpy in and numpy out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mlrec.evaluation.encode import ItemEncoderFn
from mlrec.export.hf import load_export

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_DIR = "onnx"
ONNX_FILES = {
    ("item", "fp32"): "item_encoder.onnx",
    ("user", "fp32"): "user_encoder.onnx",
    ("item", "int8"): "item_encoder.int8.onnx",
    ("user", "int8"): "user_encoder.int8.onnx",
}


# ONNX Runtime fuses residual Add + LayerNormalization into SkipLayerNormalization when it loads
# a model; on CPU that kernel took about a quarter of the int8 item encoder's time. Measured on a
# MiniLM-L12-shaped encoder, batches of 32, 2 cores: int8 1.92x torch fp32 with the fusion, 2.35x
# without it, same vectors. Every mlrec session (service, parity check) loads with it disabled.
SESSION_DISABLED_FUSIONS = ["SkipLayerNormFusion"]


def onnx_path(export_dir: str | Path, tower: str, precision: str) -> Path:
    """Where the `tower` ("item" or "user") model of the given precision lives in an export."""
    return Path(export_dir) / ONNX_DIR / ONNX_FILES[(tower, precision)]


class Backend(ItemEncoderFn, Protocol):
    def users(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """float32 [batch, history, dim] and int64 [batch, history] -> float32 [batch, dim]."""


class TorchBackend:
    """The exported model rebuilt in mlrec (safetensors only), in eval mode."""

    def __init__(
        self, export_dir: str | Path, threads: int = 0, trust_remote_code: bool = False
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model, self.tokenizer, self.cfg = load_export(export_dir, trust_remote_code)
        self.dim = self.model.item_encoder.dim

    @torch.no_grad()
    def items(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        vectors = self.model.item_encoder(
            torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        )
        return vectors.float().numpy()

    @torch.no_grad()
    def users(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        vectors = self.model.user_encoder(torch.from_numpy(history), torch.from_numpy(mask) != 0)
        return vectors.float().numpy()


class OnnxBackend:
    """The ONNX item and user encoders of an export in ONNX Runtime sessions (CPU)."""

    def __init__(self, export_dir: str | Path, precision: str = "fp32", threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (all cores)
        options.log_severity_level = 3  # errors only: its warnings about unused inputs are noise
        self.sessions = {}
        for tower in ("item", "user"):
            path = onnx_path(export_dir, tower, precision)
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: re-run `mlrec export` with export.onnx")
            self.sessions[tower] = ort.InferenceSession(
                str(path),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=SESSION_DISABLED_FUSIONS,
            )
        self.dim = self.sessions["item"].get_outputs()[0].shape[-1]

    def items(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.sessions["item"].run(None, feed)[0]

    def users(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.sessions["user"].run(None, {"history": history, "mask": mask})[0]


def load_backend(
    export_dir: str | Path, name: str, threads: int = 0, trust_remote_code: bool = False
) -> Backend:
    if name == "torch":
        return TorchBackend(export_dir, threads, trust_remote_code)
    if name in ("onnx", "onnx-int8"):
        return OnnxBackend(export_dir, "int8" if name == "onnx-int8" else "fp32", threads)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
