"""Decoder-only item encoders: padding sides, EOS, pooling rules, adapters, checkpointing, bf16."""

from __future__ import annotations

import pytest
import torch

from mlrec.config import ConfigError, load_config
from mlrec.models.adapters import adapt_backbone, enable_gradient_checkpointing, target_modules
from mlrec.models.decoders import DECODERS, right_aligned, with_eos
from mlrec.models.recommender import build_recommender

FAMILIES = ["qwen2", "qwen3", "llama", "gemma2", "gemma3_text", "mistral", "phi3"]
PAD = 1


def _model(family: str, *overrides: str):
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            f"model.architecture={family}",
            "model.hidden_size=32",
            "model.num_heads=4",
            "model.num_layers=2",
            "model.intermediate_size=64",
            "model.dropout=0",
            *overrides,
        ],
    )
    return build_recommender(cfg.model, vocab_size=300, pad_token_id=PAD), cfg


def _rows():
    """Three items, right-padded, and the same items padded on the left."""
    items = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 2]]  # the last ends in EOS (id 2) already
    width = 6
    right = torch.tensor([r + [PAD] * (width - len(r)) for r in items])
    left = torch.tensor([[PAD] * (width - len(r)) + r for r in items])
    return right, left


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_left_and_right_padding_give_the_same_item_vectors(family, pooling):
    model, _ = _model(family, f"model.pooling={pooling}")
    encoder = model.item_encoder.eval()
    right, left = _rows()
    with torch.no_grad():
        a = encoder(right, right != PAD)
        b = encoder(left, left != PAD)
        # and each item alone, unpadded: padding changes nothing
        alone = torch.cat(
            [encoder(r[r != PAD][None], torch.ones(1, int((r != PAD).sum()))) for r in right]
        )
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, alone, rtol=1e-5, atol=1e-5)


def test_last_token_pooling_reads_the_last_real_token():
    model, _ = _model("qwen2", "model.pooling=last", "model.append_eos=never")
    encoder = model.item_encoder.eval()
    right, _ = _rows()
    with torch.no_grad():
        hidden = encoder.backbone(input_ids=right, attention_mask=right != PAD).last_hidden_state
        vectors = encoder(right, right != PAD)
    lengths = (right != PAD).sum(1)
    torch.testing.assert_close(vectors, hidden[torch.arange(3), lengths - 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_eos_is_appended_where_the_familys_embedding_models_do(family):
    model, _ = _model(family)
    right, left = _rows()
    decoder = model.item_encoder.decoder
    ids, mask = decoder.prepare(left, left != PAD)
    if DECODERS[family].append_eos:
        assert decoder.eos_id == 2
        assert ids[0, :4].tolist() == [5, 6, 7, 2] and mask[0].sum() == 4
        assert ids[1, :6].tolist() == [8, 9, 10, 11, 12, 2] and mask[1].sum() == 6
        assert ids[2, :2].tolist() == [13, 2] and mask[2].sum() == 2  # not a second one
    else:
        assert decoder.eos_id is None
        assert ids[0, :3].tolist() == [5, 6, 7] and mask[0].sum() == 3
    always, _ = _model(family, "model.append_eos=always")
    ids, mask = always.item_encoder.decoder.prepare(right, right != PAD)
    assert ids[0, :4].tolist() == [5, 6, 7, 2]


def test_right_alignment_and_eos_helpers():
    right, left = _rows()
    ids, mask = right_aligned(left, left != PAD)
    assert torch.equal(mask, right != PAD) and torch.equal(ids[mask], right[right != PAD])
    full = torch.tensor([[3, 4, 5]])
    ids, mask = with_eos(full, torch.ones_like(full, dtype=torch.bool), 2)
    assert ids.tolist() == [[3, 4, 5, 2]] and mask.all()  # one column wider only when needed
    ids, mask = with_eos(right, right != PAD, 2)
    assert ids.shape[1] == 6


def test_cls_pooling_is_refused_for_decoders(tmp_path):
    with pytest.raises(ConfigError, match="model.pooling cannot be cls for a decoder-only"):
        load_config(None, ["model.architecture=llama", "model.pooling=cls"])
    # a pretrained decoder from a folder: found from its config when the model is built
    model, _ = _model("qwen2")
    model.item_encoder.backbone.save_pretrained(tmp_path / "qwen")
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'qwen'}", "model.pooling=cls"])
    with pytest.raises(ConfigError, match="model.pooling cannot be cls"):
        build_recommender(cfg.model, 300, PAD)
    # the type can be overridden: read as an encoder, cls is allowed (and no EOS is appended)
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tmp_path / 'qwen'}",
            "model.pooling=cls",
            "model.encoder_type=encoder",
        ],
    )
    assert build_recommender(cfg.model, 300, PAD).item_encoder.decoder is None


def test_pretrained_decoder_loads_from_a_folder_with_sdpa(tmp_path):
    model, _ = _model("mistral", "model.pooling=last")
    model.item_encoder.backbone.save_pretrained(tmp_path / "m")
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'm'}", "model.pooling=last"])
    loaded = build_recommender(cfg.model, 300, PAD).item_encoder
    assert type(loaded.backbone).__name__ == "MistralModel"
    assert loaded.backbone.config._attn_implementation == "mlrec_sdpa"
    assert loaded.decoder is not None and loaded.decoder.eos_id == 2
    right, _ = _rows()
    model.item_encoder.projection = loaded.projection
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.eval()(right, right != PAD), model.item_encoder.eval()(right, right != PAD)
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_default_lora_targets_cover_every_projection(family):
    model, cfg = _model(family)
    backbone = model.item_encoder.backbone
    names = target_modules(backbone, cfg.adapter)
    linears = {
        n.split(".")[-1] for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)
    }
    assert set(names) == linears
    for method in ("lora", "adalora"):
        cfg.adapter.method = method
        model, _ = _model(family)
        adapted = adapt_backbone(model.item_encoder.backbone, cfg.adapter, 100)
        wrapped = {
            n.split(".lora_A")[0].split(".")[-1]
            for n, _ in adapted.named_parameters()
            if "lora_A" in n
        }
        assert wrapped == linears
        # the default modules_to_save (BERT's embedding names) becomes the decoder's embeddings
        trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
        assert any("embed_tokens.modules_to_save" in n for n in trainable)


def test_unknown_module_to_save_is_a_config_error():
    model, cfg = _model("llama", "adapter.modules_to_save=[word_embeddings,lm_head]")
    with pytest.raises(ConfigError, match="adapter.modules_to_save: no module named 'lm_head'"):
        adapt_backbone(model.item_encoder.backbone, cfg.adapter, 10)


def _lora_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
    model, cfg = _model("qwen2", "model.pooling=last", "adapter.modules_to_save=[]")
    backbone = adapt_backbone(model.item_encoder.backbone, cfg.adapter, 10)
    for name, p in backbone.named_parameters():
        if "lora_B" in name:  # B starts at 0, which would leave A without a gradient
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
    model.item_encoder.backbone = backbone
    if checkpointing:
        enable_gradient_checkpointing(backbone)
    model.train()
    right, _ = _rows()
    model.item_encoder(right, right != PAD).square().sum().backward()
    return {n: p.grad for n, p in backbone.named_parameters() if "lora_" in n}


def test_gradient_checkpointing_under_peft_gives_the_same_lora_gradients():
    plain, checkpointed = _lora_grads(False), _lora_grads(True)
    assert plain and set(plain) == set(checkpointed)
    for name, grad in plain.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6)


def test_bf16_weights_keep_lora_and_heads_in_fp32_and_train():
    model, cfg = _model("qwen3", "model.weights_dtype=bfloat16", "model.projection_dim=16")
    backbone = model.item_encoder.backbone
    assert backbone.embed_tokens.weight.dtype == torch.bfloat16
    model.item_encoder.backbone = adapt_backbone(backbone, cfg.adapter, 10)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert model.item_encoder.projection.weight.dtype == torch.float32
    right, _ = _rows()
    vectors = model.train().item_encoder(right, right != PAD)
    assert vectors.dtype == torch.float32 and torch.isfinite(vectors).all()
    vectors.square().sum().backward()
    assert all(p.grad is not None for p in lora if p.requires_grad)
