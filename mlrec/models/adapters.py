"""Adapting the item encoder's backbone: peft LoRA / AdaLoRA, full fine-tuning, or frozen."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from mlrec.config import AdapterConfig
from mlrec.models import decoders
from mlrec.models.fused_lora import fuse_lora

ADAPTER_DIR = "adapter"  # under the run directory
HEADS_FILE = "mlrec_heads.safetensors"
_BACKBONE = "item_encoder.backbone."

# Linear layers worth adapting, per architecture: attention projections and feed-forward layers.
TARGET_MODULES: dict[str, list[str]] = {
    "xlm-roberta": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "bert": ["query", "key", "value", "dense"],
    "camembert": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "mpnet": ["q", "k", "v", "o"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    # decoder-only families (mlrec.models.decoders): every attention and MLP projection
    **{name: list(family.target_modules) for name, family in decoders.DECODERS.items()},
}


def target_modules(backbone: PreTrainedModel, cfg: AdapterConfig) -> list[str]:
    if cfg.target_modules:
        return cfg.target_modules
    model_type = backbone.config.model_type
    if model_type not in TARGET_MODULES:
        raise ValueError(
            f"adapter.target_modules: no default for model type {model_type!r}; list the names "
            "of its attention/feed-forward Linear layers"
        )
    return TARGET_MODULES[model_type]


def adapt_backbone(
    backbone: PreTrainedModel, cfg: AdapterConfig, total_steps: int, top_layers: int = 0
) -> nn.Module:
    """Return the backbone ready to train under `cfg.method`; with `top_layers` (a decoder under
    the frozen-layer cache, `model.layer_cache`), adapters go into the top layers only."""
    if cfg.method == "full":
        return backbone
    if cfg.method == "frozen":
        backbone.requires_grad_(False)
        return backbone
    save = cfg.modules_to_save
    if decoders.is_decoder(backbone.config) and save:
        save = decoders.modules_to_save(backbone, save)
    common = {
        "target_modules": target_modules(backbone, cfg),
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "modules_to_save": save or None,
    }
    if top_layers:
        layers = backbone.config.num_hidden_layers
        common["layers_to_transform"] = list(range(layers - top_layers, layers))
        common["layers_pattern"] = "layers"
    if cfg.method == "lora":
        peft_config = LoraConfig(r=cfg.r, **common)
    else:
        # AdaLoRA starts every matrix at 1.5x the target rank and prunes towards `r` between
        # tinit and total_step - tfinal; update_and_allocate must run every step for that.
        peft_config = AdaLoraConfig(
            init_r=max(cfg.r + 1, int(cfg.r * 1.5)),
            target_r=cfg.r,
            tinit=max(1, total_steps // 10),
            tfinal=max(1, total_steps // 5),
            deltaT=max(1, total_steps // 20),
            total_step=total_steps,
            **common,
        )
    model = get_peft_model(backbone, peft_config)
    if cfg.fused:
        fuse_lora(model)
    return model


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    """Recompute activations in backward, in a way that works under peft: non-reentrant
    checkpointing (the reentrant kind gives frozen-weight layers' inputs no gradient, so LoRA
    weights inside them would get none), and embedding outputs that require grad for the
    checkpointed layers' inputs when the embeddings themselves are frozen."""
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(backbone, "enable_input_require_grads"):
        backbone.enable_input_require_grads()


def merged_backbone(backbone: nn.Module) -> PreTrainedModel:
    """The plain Hugging Face model with adapters folded into its weights (for export)."""
    if isinstance(backbone, PeftModel):
        return backbone.merge_and_unload()
    return backbone


def adalora_rank(backbone: nn.Module) -> int:
    """Total rank AdaLoRA currently keeps: the non-zero singular values over all matrices."""
    return sum(int((p != 0).sum()) for n, p in backbone.named_parameters() if "lora_E" in n)


def save_adapter(model: nn.Module, state: dict[str, torch.Tensor], out: str | Path) -> None:
    """Save `model`'s peft adapter and its non-encoder weights from a full `state` dict.

    `model` is the unwrapped Recommender (it supplies the peft config); `state` holds the real
    weights, gathered across processes when they are partitioned.
    """
    out = Path(out)
    backbone = model.item_encoder.backbone
    encoder_state = {
        k.removeprefix(_BACKBONE): v for k, v in state.items() if k.startswith(_BACKBONE)
    }
    backbone.save_pretrained(str(out), state_dict=encoder_state, safe_serialization=True)
    heads = {
        k: v.detach().contiguous().cpu() for k, v in state.items() if not k.startswith(_BACKBONE)
    }
    save_file(heads, str(out / HEADS_FILE))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Put a saved adapter and heads onto a freshly built Recommender with the same base."""
    adapter_dir = Path(adapter_dir)
    model.item_encoder.backbone = PeftModel.from_pretrained(
        model.item_encoder.backbone, str(adapter_dir)
    )
    missing, unexpected = model.load_state_dict(
        load_file(str(adapter_dir / HEADS_FILE)), strict=False
    )
    if unexpected or any(not k.startswith(_BACKBONE) for k in missing):
        raise ValueError(f"{adapter_dir}: heads do not fit this model ({unexpected or missing})")
    return model
