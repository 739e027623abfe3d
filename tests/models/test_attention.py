"""mlrec's attention: Hugging Face's SDPA attention, with half-precision CPU attention in fp32."""

import copy
import json

import torch
from transformers import AutoModel

from mlrec.config import load_config
from mlrec.models.attention import NAME, sdpa_fp32_on_cpu, use_mlrec_attention
from mlrec.models.recommender import build_backbone


def _backbone():
    torch.manual_seed(0)
    cfg = load_config(None, ["model.hidden_size=32", "model.num_heads=2"])
    return build_backbone(cfg.model, vocab_size=300, pad_token_id=1).eval()


def _inputs():
    ids = torch.randint(5, 300, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0  # padding, so the attention mask is used
    return ids, mask


def test_backbones_use_it_and_compute_hugging_face_s_function_in_fp32():
    backbone = _backbone()
    assert backbone.config._attn_implementation == NAME
    reference = copy.deepcopy(backbone)
    reference.set_attn_implementation("sdpa")
    ids, mask = _inputs()
    with torch.no_grad():
        ours = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(ours, theirs)  # fp32 passes straight through


def test_bf16_attention_on_cpu_is_computed_in_fp32():
    module = _backbone().encoder.layer[0].attention.self
    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 2, 7, 16, dtype=torch.bfloat16, requires_grad=True) for _ in "qkv")
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_fp32_on_cpu(module, q, k, v, mask, dropout=0.0, scaling=0.25)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 7, 2, 16)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.detach().float(), k.detach().float(), v.detach().float(), attn_mask=mask, scale=0.25
    )
    # the fp32 result rounded once to bf16, not a bf16 computation
    assert torch.equal(out, expected.transpose(1, 2).to(torch.bfloat16))
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_saved_models_do_not_need_mlrec_to_load(tmp_path):
    backbone = _backbone()
    backbone.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    assert "attn" not in "".join(json.loads((tmp_path / "config.json").read_text()))
    loaded = AutoModel.from_pretrained(tmp_path)  # plain transformers: its default attention
    assert loaded.config._attn_implementation == "sdpa"


def test_other_attention_implementations_are_left_alone():
    backbone = _backbone()
    backbone.set_attn_implementation("eager")
    assert use_mlrec_attention(backbone).config._attn_implementation == "eager"
