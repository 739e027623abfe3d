"""Item-table rows -> item vectors, and histories -> padded batches: the one encoding path that
evaluation, the export parity check, the service's catalog and teacher caching share.

Whatever runs the item encoder (the torch model in training, an exported torch, ONNX fp32 or
ONNX int8 backend) is seen through `ItemEncoderFn`: int64 token ids and mask in, float32 vectors
out, as numpy arrays.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class ItemEncoderFn(Protocol):
    dim: int

    def items(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 [batch, tokens] twice -> float32 [batch, dim]."""


class TorchItems:
    """A torch item encoder (mlrec.models.recommender.ItemEncoder) seen as an ItemEncoderFn:
    batches go to `device`, vectors come back as float32 numpy, without gradients."""

    def __init__(self, item_encoder: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.encoder, self.device, self.dim = item_encoder, torch.device(device), item_encoder.dim

    @torch.no_grad()
    def items(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, features: np.ndarray | None = None
    ) -> np.ndarray:
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device) != 0
        extra = None if features is None else torch.from_numpy(features).to(self.device)
        return self.encoder(ids, mask, extra).float().cpu().numpy()


def encode_rows(
    encoder: ItemEncoderFn,
    table: np.ndarray,
    rows: np.ndarray,
    pad_id: int,
    batch_size: int,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Vectors of the given item-table rows, in that order; with `features` (a teacher-feature
    item tower's table, mlrec.data.features, row-aligned with `table`), the encoder is given the
    rows' teacher vectors too (only `TorchItems` takes them).

    Rows are encoded shortest first so that each batch is cut to its own longest item: titles
    vary in length and padding every batch to the table's width wastes most of the work.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), encoder.dim), dtype=np.float32)
    tokens = np.asarray(table[rows])
    lengths = (tokens != pad_id).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(rows), batch_size):
        chosen = order[start : start + batch_size]
        width = max(int(lengths[chosen].max()), 1)
        ids = tokens[chosen, :width].astype(np.int64)
        mask = (ids != pad_id).astype(np.int64)
        if features is None:
            out[chosen] = encoder.items(ids, mask)
        else:
            given = np.asarray(features[rows[chosen]], dtype=np.float32)
            out[chosen] = encoder.items(ids, mask, given)  # type: ignore[call-arg]
    return out


def pad_histories(vectors: np.ndarray, histories: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Histories as row lists of `vectors` -> float32 [users, longest, dim] and an int64 mask."""
    width = max(1, max((len(h) for h in histories), default=1))
    history = np.zeros((len(histories), width, vectors.shape[1]), dtype=np.float32)
    mask = np.zeros((len(histories), width), dtype=np.int64)
    for b, rows in enumerate(histories):
        history[b, : len(rows)] = vectors[rows]
        mask[b, : len(rows)] = 1
    return history, mask
