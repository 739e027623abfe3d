"""The teacher-feature item tower: item vectors from a frozen teacher's vector of each item.

The teacher's vectors (mlrec.data.features: computed once per item and language, centred per
language and optionally mapped onto one language's space, cached in the shards) are already
close to language-independent; what clicks must teach is which of their directions matter for
recommendation. `TeacherTower` is that map, W = I + D with D trained from zero: training starts
at the teacher itself (with a mean user encoder, at late fusion over the centred vectors), and
weight decay pulls towards it rather than towards zero. `GatedText` adds the trainable text
encoder's vector behind a per-dimension gate that starts closed (ReZero-style), so the text
encoder contributes only what the clicks show it adds.
"""

from __future__ import annotations

import torch
from torch import nn


class TeacherTower(nn.Module):
    """Teacher vectors [items, dim] -> item vectors [items, dim], x (I + D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.delta.dtype)
        return features + features @ self.delta


class GatedText(nn.Module):
    """teacher part + gate * text part, the gate [dim] starting at zero."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, teacher: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return teacher + self.gate * text
