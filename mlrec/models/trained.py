"""A trained recommender back from a checkpoint, for evaluation and export: the model alone.

Training's checkpoints hold accelerate's whole state (model, optimizer, scheduler, RNG); reading
a model needs none of the rest, so this builds the recommender exactly as training built it
(same config, adapters applied, so parameter names match) and loads the weights into it. No
optimizer, scheduler, accelerator or data loader is created, and nothing is run from the
checkpoint: weights come from safetensors, or from DeepSpeed's ZeRO partitions consolidated to
fp32 on CPU (its own reader, tensors only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mlrec.config import Config, ConfigError
from mlrec.models.adapters import adapt_backbone
from mlrec.models.recommender import Recommender, build_recommender
from mlrec.runs import MODEL_WEIGHTS, STATE_FILE, ZERO_WEIGHTS_DIR

# A distilled student's checkpoint also holds its projection into the teacher's width; it is
# training-only and not part of the recommender.
TRAINING_ONLY = ("head.",)


class CheckpointError(ConfigError):
    """A checkpoint folder is incomplete, or does not fit the configured model or shards (the
    command line reports it as it reports a config error: exit 2, one line)."""


def read_state(path: str | Path) -> dict[str, Any]:
    """The trainer's counters of a checkpoint folder (trainer_state.json)."""
    state_file = Path(path) / STATE_FILE
    try:
        return json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{state_file} cannot be read ({err})") from None


def same_tokenizer(
    state: dict, manifest: dict, checkpoint: str | Path, shards_dir: str | Path
) -> None:
    """Refuse a checkpoint trained on other token ids than the shards' (its trainer_state.json
    records the tokenizer's sha256; checkpoints from before it did are taken as they are)."""
    theirs = state.get("tokenizer_sha256")
    ours = manifest["tokenizer"]["sha256"]
    if theirs is not None and theirs != ours:
        raise CheckpointError(
            f"{checkpoint} was trained with another tokenizer (sha256 {theirs[:12]}) than the one "
            f"of {shards_dir} ({ours[:12]}): its token ids mean other tokens there; evaluate it "
            "on the shards it was trained on, or train again"
        )


def checkpoint_weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The full model state dict of a checkpoint folder, on CPU."""
    path = Path(checkpoint)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is not a complete mlrec checkpoint (no {STATE_FILE})")
    if (path / MODEL_WEIGHTS).is_file():
        return load_file(str(path / MODEL_WEIGHTS))
    if (path / ZERO_WEIGHTS_DIR).is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=ZERO_WEIGHTS_DIR)
    raise CheckpointError(
        f"{path} holds neither {MODEL_WEIGHTS} nor DeepSpeed's {ZERO_WEIGHTS_DIR}/"
    )


def load_trained(
    cfg: Config, checkpoint: str | Path, vocab_size: int, pad_token_id: int, feature_dim: int = 0
) -> Recommender:
    """The recommender of `checkpoint` as `cfg` describes it, in eval mode on CPU
    (`feature_dim`: the item features' width, for a teacher-feature item tower)."""
    model = build_recommender(cfg.model, vocab_size, pad_token_id, feature_dim)
    model.item_encoder.backbone = adapt_backbone(
        model.item_encoder.backbone, cfg.adapter, cfg.train.steps, cfg.model.layer_cache
    )
    state = {
        k: v for k, v in checkpoint_weights(checkpoint).items() if not k.startswith(TRAINING_ONLY)
    }
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: another vocabulary or width
        raise CheckpointError(
            f"{checkpoint} does not fit the configured model: {str(err).splitlines()[1].strip()}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint} does not fit the configured model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected weights, e.g. {(missing or unexpected)[:3]}): is the "
            "run's config.yaml the one it was trained with?"
        )
    return model.eval()
