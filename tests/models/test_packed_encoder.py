"""All length groups through each layer at once: the encoder's own function, or its own forward."""

import pytest
import torch
from transformers import AutoModel, BertConfig, DistilBertConfig

from mlrec.config import load_config
from mlrec.models import packed_encoder
from mlrec.models.adapters import adapt_backbone
from mlrec.models.attention import use_mlrec_attention
from mlrec.models.length_groups import length_groups
from mlrec.models.recommender import ItemEncoder, build_backbone

LENGTHS = [2, 3, 3, 9, 10, 16, 16, 16, 4, 5, 12, 1]


def _backbone(model_type: str):
    torch.manual_seed(0)
    if model_type == "xlm-roberta":
        cfg = load_config(None, ["model.hidden_size=32", "model.num_heads=2", "model.dropout=0.0"])
        return build_backbone(cfg.model, vocab_size=300, pad_token_id=1)
    config = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return use_mlrec_attention(AutoModel.from_config(config, add_pooling_layer=False))


def _inputs():
    torch.manual_seed(1)
    mask = torch.arange(16)[None, :] < torch.tensor(LENGTHS)[:, None]
    ids = torch.where(mask, torch.randint(3, 300, mask.shape), 0)
    assert len(length_groups(mask, 4)) > 1  # the case under test really groups
    return ids, mask


def _run(encoder, ids, mask, packed: bool, monkeypatch, bf16: bool = False):
    monkeypatch.setattr("mlrec.models.recommender.packable", lambda backbone: packed)
    encoder.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        vectors = encoder(ids, mask)
    (vectors.float() * torch.arange(vectors.shape[1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    return vectors.detach().float(), grads


@pytest.mark.parametrize("model_type", ["xlm-roberta", "bert"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_same_vectors_and_gradients_as_the_model_s_own_forward(model_type, pooling, monkeypatch):
    cfg = load_config(None, ["adapter.r=4"]).adapter
    backbone = adapt_backbone(_backbone(model_type), cfg, total_steps=10)  # fused LoRA
    encoder = ItemEncoder(backbone, pooling, projection_dim=8, length_buckets=4).train()
    assert packed_encoder.packable(encoder.backbone)
    ids, mask = _inputs()
    own, own_grads = _run(encoder, ids, mask, False, monkeypatch)
    packed, packed_grads = _run(encoder, ids, mask, True, monkeypatch)
    torch.testing.assert_close(packed, own, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == own_grads.keys()
    assert any("lora_A" in n for n in own_grads) and any("embeddings" in n for n in own_grads)
    for name, grad in own_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    # bf16: the same computation up to bf16 rounding
    own, _ = _run(encoder, ids, mask, False, monkeypatch, bf16=True)
    packed, _ = _run(encoder, ids, mask, True, monkeypatch, bf16=True)
    torch.testing.assert_close(packed, own, rtol=0.05, atol=0.05)


def test_other_architectures_and_checkpointing_keep_the_model_s_forward():
    backbone = _backbone("xlm-roberta")
    assert packed_encoder.packable(backbone)
    backbone.gradient_checkpointing_enable()
    assert not packed_encoder.packable(backbone)  # recomputation is the model's own
    distil = AutoModel.from_config(
        DistilBertConfig(vocab_size=300, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    )
    assert not packed_encoder.packable(distil)
    encoder = ItemEncoder(distil, "mean", projection_dim=0, length_buckets=4)
    ids, mask = _inputs()
    assert encoder(ids, mask).shape == (len(LENGTHS), 32)  # group by group instead
