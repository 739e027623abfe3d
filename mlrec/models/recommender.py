"""The recommender: an item encoder over news text, a user encoder over clicks, dot-product scores.

Item encoder: any Hugging Face encoder (AutoModel) with CLS or mean pooling and an optional linear
projection, or a decoder-only LLM with last-token or mean pooling (mlrec.models.decoders). User
encoder: NRMS-style multi-head self-attention over the clicked items followed by additive
attention (Wu et al., 2019), or a plain mean as a baseline. A candidate's score is the dot product
of its item vector with the user vector.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, XLMRobertaConfig

from mlrec.config import ModelConfig
from mlrec.hub import from_pretrained
from mlrec.models import decoders
from mlrec.models.attention import use_mlrec_attention
from mlrec.models.length_groups import length_groups
from mlrec.models.packed_encoder import packable, packed_hidden_states
from mlrec.models.teacher_tower import GatedText, TeacherTower


def build_backbone(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> PreTrainedModel:
    """Load `cfg.name_or_path` (hub id or folder), or build a random XLM-R of the set size."""
    if cfg.name_or_path:
        return load_backbone(cfg.name_or_path, cfg.trust_remote_code, decoders.weights_dtype(cfg))
    if cfg.architecture != "xlm-roberta":
        return use_mlrec_attention(decoders.random_decoder(cfg, vocab_size, pad_token_id))
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=514,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )
    backbone = AutoModel.from_config(config, add_pooling_layer=False)
    # Random position and token-type embeddings are the same for every item, so mean-pooled item
    # vectors of a fresh encoder start nearly parallel (cosine 0.97 measured on the synthetic
    # corpus) and two-tower training stalls; starting them at zero (they still train) fixes that.
    shared = [
        backbone.embeddings.position_embeddings.weight,
        backbone.embeddings.token_type_embeddings.weight,
    ]
    with _gathered(shared), torch.no_grad():
        for weight in shared:
            weight.zero_()
    return use_mlrec_attention(backbone)


def _gathered(params: list[torch.nn.Parameter]):
    """Under DeepSpeed ZeRO-3 weights are partitioned as they are created; editing them in place
    needs them gathered (and written back from rank 0)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def load_backbone(
    name_or_path: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A pretrained encoder from the hub or a folder, without the pooler mlrec does not use, and
    with mlrec's attention (`mlrec.models.attention`); decoders load with SDPA attention."""
    config = from_pretrained(AutoConfig, name_or_path, "model", trust_remote_code)
    if decoders.is_decoder(config):
        backbone = from_pretrained(
            AutoModel,
            name_or_path,
            "model",
            trust_remote_code,
            dtype=dtype,
            attn_implementation=decoders.attention_implementation(config),
        )
        return use_mlrec_attention(backbone)
    extra = {} if dtype == torch.float32 else {"dtype": dtype}
    try:  # BERT-family poolers go unused, and DDP rejects parameters without gradients
        backbone = from_pretrained(
            AutoModel, name_or_path, "model", trust_remote_code, add_pooling_layer=False, **extra
        )
    except TypeError:  # architectures without a pooler do not take the argument
        backbone = from_pretrained(AutoModel, name_or_path, "model", trust_remote_code, **extra)
    return use_mlrec_attention(backbone)


class ItemEncoder(nn.Module):
    """Token ids -> one vector per item.

    With `length_buckets` > 0, the items are encoded in up to that many groups of similar length,
    each cut to its longest item (`mlrec.models.length_groups`): the same vectors, less padding.
    BERT-family encoders take all groups through each layer at once (`mlrec.models.packed_encoder`).

    `tower` (model.item_tower): "text" encodes the tokens; "teacher" maps each item's teacher
    vector (`features`, [items, feature_dim]) and does not run the text encoder; "fused" adds the
    text vector (projected to feature_dim) behind a closed gate (`mlrec.models.teacher_tower`).

    A decoder (`decoder` set) sees its rows right-aligned, with EOS appended where asked
    (mlrec.models.decoders); while training with a frozen-layer cache (`layer_cache` set), only
    its top layers run (mlrec.models.layer_cache).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        pooling: str,
        projection_dim: int,
        length_buckets: int = 0,
        tower: str = "text",
        feature_dim: int = 0,
        decoder: decoders.DecoderInputs | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        width = backbone.config.hidden_size
        if tower != "text":
            if not feature_dim:
                raise ValueError(f"model.item_tower={tower} needs the item features' width")
            if projection_dim and projection_dim != feature_dim:
                raise ValueError(
                    f"model.projection_dim ({projection_dim}) must be 0 or the item features' "
                    f"width ({feature_dim}) with model.item_tower={tower}"
                )
            projection_dim = feature_dim if tower == "fused" else 0
        self.projection = nn.Linear(width, projection_dim) if projection_dim else nn.Identity()
        self.dim = feature_dim if tower != "text" else projection_dim or width
        self.length_buckets = length_buckets
        self.tower = tower
        self.teacher = TeacherTower(feature_dim) if tower != "text" else None
        self.gate = GatedText(feature_dim) if tower == "fused" else None
        self.decoder = decoder
        self.layer_cache = None  # set by the trainer (mlrec.models.layer_cache.LayerCache)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.teacher is None:
            return self.text(input_ids, attention_mask)
        if features is None or len(features) != len(input_ids):
            raise ValueError(
                f"model.item_tower={self.tower} needs each item's teacher vector "
                "(data.item_features), and this batch has none for some of its items"
            )
        teacher = self.teacher(features)
        if self.gate is None:
            return teacher
        return self.gate(teacher, self.text(input_ids, attention_mask).to(teacher.dtype))

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's vectors of a padded block of items."""
        if self.decoder is not None and len(input_ids):
            input_ids, attention_mask = self.decoder.prepare(input_ids, attention_mask)
            if self.layer_cache is not None and self.training:
                return self.pool(
                    *self.layer_cache.top_states(self.backbone, input_ids, attention_mask)
                )
        # an exported graph (ONNX) takes one padded block: the grouping is data-dependent, and
        # so is a test of the batch size, which would fix that size in the graph
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self.encode(input_ids, attention_mask)
        if not len(input_ids):  # the Hugging Face encoder cannot take 0 rows
            dtype = self.backbone.get_input_embeddings().weight.dtype
            return torch.zeros(0, self.dim, device=input_ids.device, dtype=dtype)
        if not self.length_buckets:
            return self.encode(input_ids, attention_mask)
        groups = length_groups(attention_mask, self.length_buckets)
        if packable(self.backbone):  # all groups through each layer at once
            hidden = packed_hidden_states(self.backbone, input_ids, attention_mask, groups)
            vectors = torch.cat(
                [
                    self.pool(states, attention_mask[rows, :width])
                    for states, (rows, width) in zip(hidden, groups, strict=True)
                ]
            )
        elif len(groups) == 1:
            return self.encode(input_ids[:, : groups[0][1]], attention_mask[:, : groups[0][1]])
        else:
            vectors = torch.cat(
                [
                    self.encode(input_ids[rows, :width], attention_mask[rows, :width])
                    for rows, width in groups
                ]
            )
        order = torch.cat([rows for rows, _ in groups])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return vectors[inverse]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One padded block of items -> their vectors, through the model's own forward."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden, attention_mask)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [items, tokens, hidden] -> item vectors."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":
            pooled = decoders.last_token(hidden, attention_mask)
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        if self.decoder is not None:  # bf16 weights: the heads stay fp32
            pooled = pooled.float()
        return self.projection(pooled)


class AdditiveAttention(nn.Module):
    """Softmax-weighted sum of a sequence, weights from a small learned query."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Under autocast the logits are bf16/fp16 while x is fp32: fill with the logits' own
        # minimum (fp32's overflows bf16), and pool x in its dtype.
        logits = self.score(x).squeeze(-1)
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1) * mask  # an empty history pools to zeros
        return torch.einsum("bh,bhd->bd", weights.to(x.dtype), x)


class AttentionUserEncoder(nn.Module):
    """NRMS user encoder: self-attention across clicked items, then additive attention."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.user_heads ({heads}) must divide the item width ({dim})")
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.pool = AdditiveAttention(dim)

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A row with no history would attend to nothing (NaN); let it see itself instead.
        key_padding = ~mask
        key_padding[:, 0] &= mask.any(dim=1)
        attended, _ = self.self_attention(history, history, history, key_padding_mask=key_padding)
        return self.pool(self.norm(history + attended), mask)


class MeanUserEncoder(nn.Module):
    """Baseline: the mean of the clicked items' vectors."""

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(history.dtype)
        return (history * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def build_user_encoder(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.user_encoder == "mean":
        return MeanUserEncoder()
    return AttentionUserEncoder(dim, cfg.user_heads, cfg.dropout)


def candidate_scores(
    users: torch.Tensor, items: torch.Tensor, candidates: torch.Tensor, in_batch: bool
) -> torch.Tensor:
    """Dot products of user b with its candidates (rows of `items`): [batch, candidates]; with
    `in_batch`, with every candidate of the batch: [batch, batch * candidates], row b's own at
    columns b*C .. b*C + C - 1 (see `target_columns`)."""
    if in_batch:
        return users @ items[candidates.reshape(-1)].T
    return torch.einsum("bd,bcd->bc", users, items[candidates])


def target_columns(labels: torch.Tensor, candidates: torch.Tensor, in_batch: bool) -> torch.Tensor:
    """The column of each row's positive in `candidate_scores`' output."""
    if in_batch:  # row b's positive is its first candidate, at column b * candidates_per_row
        return torch.arange(len(labels), device=labels.device) * candidates.shape[1]
    return labels


class Recommender(nn.Module):
    """Scores candidates for users; each distinct item of a batch is encoded once."""

    def __init__(self, item_encoder: ItemEncoder, user_encoder: nn.Module) -> None:
        super().__init__()
        self.item_encoder = item_encoder
        self.user_encoder = user_encoder

    def user_vectors(
        self, item_vectors: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.user_encoder(item_vectors[history], history_mask)

    def forward(
        self,
        item_ids: torch.Tensor,
        item_mask: torch.Tensor,
        history: torch.Tensor,
        history_mask: torch.Tensor,
        candidates: torch.Tensor,
        in_batch: bool = False,
        item_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [batch, candidates]; `history`/`candidates` index rows of `item_ids` (and of
        `item_features`, the items' teacher vectors, for a teacher-feature item tower).

        With `in_batch`, every user is scored against every candidate of the batch:
        [batch, batch * candidates], row b's own candidates at columns b*C .. b*C + C - 1.
        """
        items = self.item_encoder(item_ids, item_mask, item_features)
        users = self.user_vectors(items, history, history_mask)
        return candidate_scores(users, items, candidates, in_batch)


def item_encoder_for(
    backbone: PreTrainedModel, cfg: ModelConfig, feature_dim: int = 0
) -> ItemEncoder:
    """The item encoder `cfg` describes around `backbone` (a decoder's inputs from its config;
    `feature_dim`: the width of the item features a teacher-feature item tower maps)."""
    return ItemEncoder(
        backbone,
        cfg.pooling,
        cfg.projection_dim,
        cfg.length_buckets,
        tower=cfg.item_tower,
        feature_dim=feature_dim,
        decoder=decoders.decoder_inputs(backbone, cfg),
    )


def build_recommender(
    cfg: ModelConfig, vocab_size: int, pad_token_id: int, feature_dim: int = 0
) -> Recommender:
    """The recommender `cfg` describes; `feature_dim`: the width of the item features
    (data.item_features) a teacher-feature item tower maps."""
    backbone = build_backbone(cfg, vocab_size, pad_token_id)
    item_encoder = item_encoder_for(backbone, cfg, feature_dim)
    return Recommender(item_encoder, build_user_encoder(cfg, item_encoder.dim))
