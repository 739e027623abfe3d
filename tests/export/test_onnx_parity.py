"""ONNX models of an export: dynamic axes, int8, and the parity check that guards them."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from transformers import AutoModel

from mlrec.export.backends import TorchBackend, onnx_path
from mlrec.export.parity import PARITY_FILE, ParityError, check_parity


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_folder_loads_in_transformers_and_carries_its_model_card(tiny_export):
    plain = AutoModel.from_pretrained(str(tiny_export))
    assert plain.config.model_type == "xlm-roberta"
    assert not any("lora" in name for name, _ in plain.named_parameters())
    card = (tiny_export / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for lang in ("en", "de", "ru", "ar", "zh", "ja"):
        assert f"| {lang} | 10 | 0.6100 | 0.3200 | 0.3700 | 0.4500 |" in card
    assert "| **overall** | 60 |" in card
    index = (tiny_export / "catalog" / "index.tsv").read_text().splitlines()
    assert len(index) == len(np.load(tiny_export / "catalog" / "tokens.npy"))


@pytest.mark.parametrize("batch,tokens", [(1, 3), (9, 16)])
def test_item_encoder_onnx_has_dynamic_axes_and_matches_torch(tiny_export, batch, tokens):
    graph = onnx.load(str(onnx_path(tiny_export, "item", "fp32"))).graph
    for tensor in graph.input:
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim] == ["batch", "tokens"]
    reference = TorchBackend(tiny_export)
    rng = np.random.default_rng(batch)
    ids = rng.integers(5, 1000, size=(batch, tokens)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, tokens // 2 + 1 :] = 0  # one padded row
    got = session(onnx_path(tiny_export, "item", "fp32")).run(
        None, {"input_ids": ids, "attention_mask": mask}
    )[0]
    np.testing.assert_allclose(got, reference.items(ids, mask), rtol=1e-4, atol=1e-5)


def test_user_encoder_onnx_matches_torch_for_any_history_length(tiny_export):
    reference = TorchBackend(tiny_export)
    user = session(onnx_path(tiny_export, "user", "fp32"))
    rng = np.random.default_rng(0)
    for batch, clicks in [(1, 1), (4, 12)]:
        history = rng.normal(size=(batch, clicks, reference.dim)).astype(np.float32)
        mask = np.ones((batch, clicks), dtype=np.int64)
        mask[-1, clicks // 2 :] = 0
        got = user.run(None, {"history": history, "mask": mask})[0]
        np.testing.assert_allclose(got, reference.users(history, mask), rtol=1e-4, atol=1e-5)


def test_int8_models_are_dynamically_quantized(tiny_export):
    for tower in ("item", "user"):
        fp32, int8 = onnx_path(tiny_export, tower, "fp32"), onnx_path(tiny_export, tower, "int8")
        ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
        assert "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops
        assert int8.stat().st_size < fp32.stat().st_size
        if tower == "item":  # fused before quantizing; the fp32 graph keeps standard operators
            assert "BiasGelu" in ops and "SkipLayerNormalization" not in ops, ops
            assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(fp32)).graph.node)
    assert not list(onnx_path(tiny_export, "item", "int8").parent.glob("*.fused.onnx"))


def test_parity_check_passes_and_reports(tiny_export, tiny_shards, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    report = check_parity(export, tiny_shards, impressions=60)
    assert report == json.loads((export / PARITY_FILE).read_text())
    assert report["passed"] and report["held_out"]["impressions"] == 60
    assert report["fp32"]["item_cosine_min"] >= 0.999 and report["fp32"]["user_cosine_min"] >= 0.999
    assert report["int8"]["item_cosine_min"] >= 0.99 and report["int8"]["user_cosine_min"] >= 0.99
    for precision in ("fp32", "int8"):
        row = report[precision]
        assert row["auc_change"] == pytest.approx(row["auc"] - report["torch"]["auc"])
        assert 0 <= row["top1_agreement"] <= 1


def break_weights(path, seed=0):
    """Scramble the largest weight matrix of an ONNX model (a plausible export bug)."""
    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(largest)
    scrambled = np.random.default_rng(seed).permutation(weights.ravel()).reshape(weights.shape)
    largest.CopyFrom(numpy_helper.from_array(scrambled.astype(weights.dtype), largest.name))
    onnx.save(model, str(path))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_broken_onnx_model_fails_the_parity_check(tiny_export, tiny_shards, tmp_path, precision):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    break_weights(onnx_path(export, "item", precision))
    with pytest.raises(ParityError, match=f"{precision}: minimum cosine") as info:
        check_parity(export, tiny_shards, impressions=60)
    assert f"report: {PARITY_FILE} in the export" in str(info.value)
    report = json.loads((export / PARITY_FILE).read_text())
    assert not report["passed"] and not report[precision]["passed"]


def test_export_refuses_pickled_weights(tiny_export, tmp_path):
    from mlrec.export.hf import load_export

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    state = AutoModel.from_pretrained(str(export)).state_dict()
    (export / "model.safetensors").unlink()
    torch.save(state, export / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_export(export)


def test_remote_code_in_an_export_is_not_run(tiny_export, tmp_path):
    from mlrec.export.hf import load_export

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    marker = tmp_path / "remote-code-ran"
    (export / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import XLMRobertaConfig as EvilConfig\n"
        "from transformers import XLMRobertaModel as EvilModel\n"
    )
    config = json.loads((export / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (export / "config.json").write_text(json.dumps(config))
    model, _, cfg = load_export(export)
    assert not cfg.model.trust_remote_code and not marker.exists()
    assert type(model.item_encoder.backbone).__module__.startswith("transformers.")
