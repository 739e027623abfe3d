"""Frozen-layer cache for decoder item encoders (ONCE-style): the bottom layers run once per item.

With `model.layer_cache: k`, the bottom L - k layers of an L-layer decoder and its embeddings are
frozen (LoRA goes into the top k layers only, mlrec.models.adapters), so every item's hidden
states after layer L - k are the same at every step. They are computed once for every row of the
item table (one row per (news id, language): a text in a language), stored memory-mapped in
`<shards_dir>/layer-cache/` (float16, bfloat16 or float32, with the attention mask and the token
ids they belong to), and training runs only the top k layers on them. Items repeat across
impressions and histories, so most of the encoder's forward and backward pass is gone.

Only training reads the cache: evaluation and export run the whole model, whose bottom layers
are the frozen ones the cache was computed with (the same function up to the stored precision).

The cache is recomputed when what it depends on changes (its `fingerprint`): the weights of the
embeddings and bottom layers and the model config, the tokenizer, the item table, L - k, how
items are prepared (EOS) and the stored dtype. A changed fingerprint is logged with what changed,
and the cache rebuilt; a cache whose files are cut or missing is rebuilt too.

A batch's items are found by their token ids (the rows the decoder sees, mlrec.models.decoders),
so nothing in the data path changes; an item that is not in the table is an error, never a
silent full-depth pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlrec import io
from mlrec.config import ConfigError

log = logging.getLogger(__name__)

CACHE_DIR = "layer-cache"  # under the shards folder
META = "meta.json"
STATES, MASKS, TOKENS = "states.npy", "mask.npy", "tokens.npy"
# numpy has no bfloat16: its bits are stored as uint16
_STORED = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}
_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class _Reached(Exception):
    """Raised by the hook on the last cached layer: nothing above it needs to run."""

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def decoder_model(backbone: nn.Module) -> nn.Module:
    """The Hugging Face decoder (`embed_tokens`, `layers`, `norm`) under a peft wrapper."""
    model = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    if not hasattr(model, "layers") or not hasattr(model, "embed_tokens"):
        raise ConfigError(
            f"model.layer_cache: {type(model).__name__} has no `layers` / `embed_tokens`; the "
            "cache takes decoder-only models of mlrec.models.decoders.DECODERS"
        )
    return model


def split_layer(backbone: nn.Module, top_layers: int) -> int:
    """L - k: how many bottom layers the cache replaces."""
    layers = len(decoder_model(backbone).layers)
    if not 0 < top_layers < layers:
        raise ConfigError(f"model.layer_cache must be between 1 and {layers - 1}; got {top_layers}")
    return layers - top_layers


@torch.no_grad()
def bottom_states(
    backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, split: int
) -> torch.Tensor:
    """Hidden states after the first `split` layers (the input of layer `split`)."""
    layer = decoder_model(backbone).layers[split - 1]

    def stop(_module, _inputs, output):
        raise _Reached(output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(stop)
    try:
        backbone(input_ids=input_ids, attention_mask=attention_mask)
    except _Reached as reached:
        return reached.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"the decoder never reached its layer {split}")


def _pass_through(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def skipped_layers(backbone: nn.Module, split: int):
    """The first `split` layers return their input unchanged (their output is in the cache).
    Layers keep their index, so per-layer settings (Gemma's sliding-window layers) still apply
    to the right ones."""
    layers = decoder_model(backbone).layers[:split]
    for layer in layers:
        layer.forward = _pass_through
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def weights_digest(backbone: nn.Module, split: int) -> str:
    """sha256 of what the cached states depend on: the model config, the embeddings and the
    bottom `split` layers' weights."""
    model = decoder_model(backbone)
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    parts = [("embed_tokens", model.embed_tokens)]
    parts += [(f"layers.{i}", layer) for i, layer in enumerate(model.layers[:split])]
    for prefix, module in parts:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint(
    item_encoder: nn.Module, split: int, dtype: str, tokenizer_sha256: str, table_sha256: str
) -> dict[str, Any]:
    return {
        "weights": weights_digest(item_encoder.backbone, split),
        "split_layer": split,
        "dtype": dtype,
        "tokenizer_sha256": tokenizer_sha256,
        "item_table_sha256": table_sha256,
        "eos_id": item_encoder.decoder.eos_id,
    }


def _key(tokens: np.ndarray) -> bytes:
    return np.ascontiguousarray(tokens, dtype=np.int64).tobytes()


class LayerCache:
    """The stored states of one cache folder, and the top layers' pass over them."""

    def __init__(self, folder: Path, split: int, dtype: str) -> None:
        self.folder, self.split, self.dtype = folder, split, dtype
        self.states = np.load(folder / STATES, mmap_mode="r")
        self.masks = np.load(folder / MASKS, mmap_mode="r")
        tokens = np.load(folder / TOKENS)
        lengths = self.masks.sum(axis=1)
        self.rows = {_key(t[:n]): i for i, (t, n) in enumerate(zip(tokens, lengths, strict=True))}

    def lookup(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        ids = input_ids.cpu().numpy()
        lengths = (attention_mask != 0).sum(dim=1).cpu().numpy()
        rows = [self.rows.get(_key(t[:n])) for t, n in zip(ids, lengths, strict=True)]
        if None in rows:
            raise ConfigError(
                f"model.layer_cache: {rows.count(None)} of {len(rows)} items of a batch are not "
                f"in the cache {self.folder} (built from another item table?); delete the "
                "folder and train again"
            )
        return np.asarray(rows)

    def top_states(
        self, backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states of prepared (right-aligned) rows through the top layers only,
        and their mask."""
        rows = self.lookup(input_ids, attention_mask)
        width = input_ids.shape[1]
        states = torch.from_numpy(np.ascontiguousarray(self.states[rows, :width]))
        if self.dtype == "bfloat16":
            states = states.view(torch.bfloat16)
        weight = decoder_model(backbone).embed_tokens.weight
        states = states.to(device=input_ids.device, dtype=weight.dtype)
        mask = attention_mask != 0
        with skipped_layers(backbone, self.split):
            hidden = backbone(inputs_embeds=states, attention_mask=mask.long()).last_hidden_state
        return hidden, mask


@torch.no_grad()
def build_cache(
    item_encoder: nn.Module,
    table: np.ndarray,
    pad_id: int,
    folder: Path,
    split: int,
    dtype: str,
    batch_size: int = 64,
) -> None:
    """Compute every item-table row's states after `split` layers into `folder` (staged, then
    renamed: a killed build leaves no cache that looks complete)."""
    backbone = item_encoder.backbone
    device = decoder_model(backbone).embed_tokens.weight.device
    hidden_size = decoder_model(backbone).config.hidden_size
    rows, width = table.shape
    width += 1  # room for an appended EOS
    lengths = (np.asarray(table) != pad_id).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    was_training = backbone.training
    backbone.eval()
    with io.staged_folder(folder) as tmp:
        states = np.lib.format.open_memmap(
            tmp / STATES, mode="w+", dtype=_STORED[dtype], shape=(rows, width, hidden_size)
        )
        masks = np.lib.format.open_memmap(tmp / MASKS, mode="w+", dtype=bool, shape=(rows, width))
        tokens = np.lib.format.open_memmap(
            tmp / TOKENS, mode="w+", dtype=np.int64, shape=(rows, width)
        )
        for start in range(0, rows, batch_size):
            chosen = np.sort(order[start : start + batch_size])
            cut = max(int(lengths[chosen].max()), 1)
            ids = torch.from_numpy(np.asarray(table[chosen, :cut]).astype(np.int64)).to(device)
            ids, mask = item_encoder.decoder.prepare(ids, ids != pad_id)
            hidden = bottom_states(backbone, ids, mask.long(), split).to(_TORCH[dtype]).cpu()
            if dtype == "bfloat16":
                hidden = hidden.view(torch.uint16)
            n = ids.shape[1]
            states[chosen, :n] = hidden.numpy()
            masks[chosen, :n] = mask.cpu().numpy()
            tokens[chosen, :n] = ids.cpu().numpy()
        for array in (states, masks, tokens):
            array.flush()
        del states, masks, tokens
    backbone.train(was_training)


def attach_layer_cache(
    item_encoder: nn.Module,
    top_layers: int,
    dtype: str,
    table_path: Path,
    tokenizer_sha256: str,
    pad_id: int,
    cache_root: Path,
    build: bool = True,
) -> LayerCache:
    """Set `item_encoder.layer_cache`, building or rebuilding the cache first when `build` (the
    main process; the others call this after it, with build=False)."""
    if item_encoder.decoder is None:
        raise ConfigError("model.layer_cache needs a decoder-only item encoder (see DECODERS)")
    split = split_layer(item_encoder.backbone, top_layers)
    folder = cache_root / CACHE_DIR
    if build:
        wanted = fingerprint(item_encoder, split, dtype, tokenizer_sha256, io.sha256(table_path))
        reason = _stale(folder, wanted)
        if reason:
            log.info("layer cache %s: %s; computing it (%d layers)", folder, reason, split)
            table = np.load(table_path, mmap_mode="r")
            build_cache(item_encoder, table, pad_id, folder, split, dtype)
            io.write_json(folder / META, wanted, indent=1)
        else:
            log.info("layer cache %s: up to date, reused", folder)
    item_encoder.layer_cache = LayerCache(folder, split, dtype)
    return item_encoder.layer_cache


def _stale(folder: Path, wanted: dict[str, Any]) -> str:
    """Why the cache in `folder` cannot be used ("" when it can)."""
    try:
        found = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return "no complete cache"
    changed = [key for key in wanted if found.get(key) != wanted[key]]
    if changed:
        return f"{', '.join(changed)} changed"
    try:
        for name in (STATES, MASKS, TOKENS):
            np.load(folder / name, mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"a file is damaged ({err})"
    return ""
