"""Precomputed catalog vectors: written once into an export, then loaded by `mlrec serve` when they
belong to that export (same catalog, backend and model files), and never when they do not."""

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlrec.config import load_config
from mlrec.serve.ranker import Ranker
from mlrec.serve.vectors import (
    StaleVectors,
    load_vectors,
    sources,
    vectors_path,
    write_catalog_vectors,
)
from tests.export.tiny_export import make_export
from tests.serve.server import MLREC, free_port, running_service


def config(export: Path, *overrides: str):
    return load_config(export / "mlrec_config.yaml", list(overrides))


def copy(export: Path, dest: Path) -> Path:
    shutil.copytree(export, dest)
    return dest


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_shards) -> Path:
    """An export as `make_export` writes it: no precomputed vectors."""
    return make_export(tmp_path_factory.mktemp("vectors"), tiny_shards)


@pytest.fixture(scope="module")
def embedded(export) -> Ranker:
    """What the service computes when it embeds the catalog at start (ONNX, the default)."""
    ranker = Ranker(export, config(export))
    assert ranker.vectors_source == "embedded"
    return ranker


@pytest.fixture(scope="module")
def precomputed(export, tmp_path_factory) -> Path:
    """A copy of the export with its catalog's ONNX vectors written, as `mlrec export` does."""
    out = copy(export, tmp_path_factory.mktemp("precomputed") / "export")
    write_catalog_vectors(out, config(out), "onnx")
    return out


@pytest.fixture(scope="module")
def retrained(precomputed, tmp_path_factory) -> Path:
    """The precomputed export after its item encoder changed under the vectors: another model
    (every weight nudged), with the old catalog folder, vectors included, left in place."""
    import onnx
    from onnx import numpy_helper

    out = copy(precomputed, tmp_path_factory.mktemp("retrained") / "export")
    path = out / "onnx" / "item_encoder.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        weights = numpy_helper.to_array(tensor)
        if weights.dtype == np.float32 and weights.size > 1:
            nudged = weights + 0.2 * weights.std() * rng.standard_normal(weights.shape)
            tensor.CopyFrom(numpy_helper.from_array(nudged.astype(np.float32), tensor.name))
    onnx.save(model, str(path))
    return out


def ids(export: Path) -> list[str]:
    return [line.split("\t")[0] for line in (export / "catalog" / "index.tsv").open()]


def served_scores(client, history, candidates) -> tuple[list[str], np.ndarray]:
    got = client.post("/rank", json={"history": history, "candidates": candidates})
    assert got.status_code == 200, got.text
    items = got.json()["items"]
    return [i["id"] for i in items], np.asarray([i["score"] for i in items])


def expected_scores(ranker, history, candidates) -> tuple[list[str], np.ndarray]:
    items = ranker.rank(history, candidates)
    return [i["id"] for i in items], np.asarray([i["score"] for i in items])


def test_export_vectors_are_the_ones_the_service_would_embed(precomputed, embedded):
    vectors = np.load(vectors_path(precomputed, "onnx"), allow_pickle=False)
    np.testing.assert_allclose(vectors, embedded.catalog.vectors, rtol=1e-6, atol=1e-7)
    metadata = json.loads(vectors_path(precomputed, "onnx").with_suffix(".json").read_text())
    assert metadata["backend"] == "onnx" and metadata["dtype"] == "float32"
    shape = (len(embedded.catalog), embedded.backend.dim)
    assert (metadata["rows"], metadata["dim"]) == vectors.shape == shape
    onnx_file = (precomputed / "onnx" / "item_encoder.onnx").read_bytes()
    assert metadata["sha256"]["onnx/item_encoder.onnx"] == hashlib.sha256(onnx_file).hexdigest()
    assert set(metadata["sha256"]) == {
        "catalog/tokens.npy",
        "catalog/index.tsv",
        "onnx/item_encoder.onnx",
    }


def test_the_service_loads_precomputed_vectors_and_scores_as_if_it_embedded(precomputed, embedded):
    catalog = ids(precomputed)
    history, candidates = catalog[:5], catalog[100:130:3]
    log = precomputed.parent / "serve.log"
    with running_service(precomputed, log) as client:
        got_ids, got = served_scores(client, history, candidates)
        top = client.post("/topk", json={"history": history, "k": 10}).json()["items"]
    want_ids, want = expected_scores(embedded, history, candidates)
    assert got_ids == want_ids
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    best = embedded.top_k(history, 10, True, None)
    assert [i["id"] for i in top] == [i["id"] for i in best]
    text = log.read_text()
    assert f"loaded precomputed vectors of {len(catalog)} catalog items" in text
    assert "embedded" not in text, text


def test_a_stale_vectors_file_is_not_used(retrained):
    reference = Ranker(retrained, config(retrained))  # it finds the same stale file
    assert reference.vectors_source == "embedded"
    stale = np.load(vectors_path(retrained, "onnx"), allow_pickle=False)
    assert not np.allclose(stale, reference.catalog.vectors, rtol=1e-2)  # using it would show
    catalog = ids(retrained)
    history, candidates = catalog[:5], catalog[100:130:3]
    log = retrained.parent / "serve.log"
    with running_service(retrained, log) as client:
        got_ids, got = served_scores(client, history, candidates)
    want_ids, want = expected_scores(reference, history, candidates)
    assert got_ids == want_ids
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    text = log.read_text()
    assert "not using" in text and "another onnx/item_encoder.onnx (sha256 differs)" in text
    assert f"embedded {len(catalog)} catalog items" in text


def test_a_stale_file_the_user_named_stops_the_service(retrained):
    path = vectors_path(retrained, "onnx")
    cmd = [MLREC, "serve", str(retrained), f"serve.port={free_port()}"]
    out = subprocess.run(
        [*cmd, f"serve.catalog_vectors={path}"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"serve.catalog_vectors: {path} does not belong to this export" in out.stderr
    assert "onnx/item_encoder.onnx" in out.stderr


def test_a_named_file_is_loaded_from_anywhere_and_must_exist(precomputed, tmp_path):
    elsewhere = tmp_path / "item-vectors.npy"
    source = vectors_path(precomputed, "onnx")
    shutil.copy(source, elsewhere)
    shutil.copy(source.with_suffix(".json"), elsewhere.with_suffix(".json"))
    ranker = Ranker(precomputed, config(precomputed, f"serve.catalog_vectors={elsewhere}"))
    assert ranker.vectors_source == "loaded"
    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match="serve.catalog_vectors: .*nope.npy not found"):
        Ranker(precomputed, config(precomputed, f"serve.catalog_vectors={missing}"))


def test_vectors_of_another_catalog_or_backend_are_not_used(precomputed, tmp_path, caplog):
    changed = copy(precomputed, tmp_path / "export")
    tokens = np.load(changed / "catalog" / "tokens.npy")
    np.save(changed / "catalog" / "tokens.npy", tokens[:-1])  # one item fewer
    index = (changed / "catalog" / "index.tsv").read_text().splitlines(keepends=True)
    (changed / "catalog" / "index.tsv").write_text("".join(index[:-1]))
    with caplog.at_level(logging.INFO, logger="mlrec.serve"):
        ranker = Ranker(changed, config(changed))
    assert ranker.vectors_source == "embedded"
    assert ranker.catalog.vectors.shape == (len(index) - 1, ranker.backend.dim)
    assert f"rows is {len(index)} in vectors.onnx.json; this service has {len(index) - 1}" in (
        caplog.text
    )
    # the int8 backend has no file of its own and must not take the fp32 one
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlrec.serve"):
        ranker = Ranker(precomputed, config(precomputed, "serve.backend=onnx-int8"))
    assert ranker.vectors_source == "embedded"
    assert "no precomputed catalog vectors at" in caplog.text and "vectors.onnx-int8.npy" in (
        caplog.text
    )


def test_vectors_without_their_metadata_are_not_used(precomputed, tmp_path):
    bare = copy(precomputed, tmp_path / "export")
    vectors_path(bare, "onnx").with_suffix(".json").unlink()
    dim = np.load(vectors_path(bare, "onnx")).shape[1]
    expected = {"format": 1, "backend": "onnx", "rows": len(ids(bare)), "dim": dim}
    with pytest.raises(StaleVectors, match="vectors.onnx.json is missing"):
        load_vectors(vectors_path(bare, "onnx"), {**expected, "sha256": sources(bare, "onnx")})
    assert Ranker(bare, config(bare)).vectors_source == "embedded"


def test_torch_vectors_load_and_follow_the_saved_model_config(export, tmp_path):
    torch_export = copy(export, tmp_path / "export")
    cfg = config(torch_export, "serve.backend=torch")
    write_catalog_vectors(torch_export, cfg, "torch")
    loaded = Ranker(torch_export, cfg)
    assert loaded.vectors_source == "loaded"
    embedded = Ranker(export, config(export, "serve.backend=torch"))
    assert embedded.vectors_source == "embedded"
    np.testing.assert_allclose(loaded.catalog.vectors, embedded.catalog.vectors, rtol=1e-6)
    assert {"model.safetensors", "mlrec_heads.safetensors", "config.json"} <= set(
        sources(torch_export, "torch")
    )
    # pooling is in mlrec_config.yaml, not in the weights: changing it makes the vectors stale
    saved = torch_export / "mlrec_config.yaml"
    saved.write_text(saved.read_text().replace("pooling: mean", "pooling: cls"))
    assert Ranker(torch_export, config(torch_export, "serve.backend=torch")).vectors_source == (
        "embedded"
    )


def test_re_exporting_into_a_folder_removes_its_old_vectors(precomputed, tiny_shards, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(precomputed, root / "export")
    assert vectors_path(root / "export", "onnx").is_file()
    out = make_export(root, tiny_shards, onnx=False)
    assert sorted(p.name for p in (out / "catalog").iterdir()) == ["index.tsv", "tokens.npy"]


@pytest.mark.slow
def test_mlrec_export_writes_the_vectors_mlrec_serve_loads(tiny_shards, tmp_path):
    """The user's path: train, `mlrec export` (without ONNX, so the vectors are torch's), serve."""
    from tests.conftest import TINY

    run = tmp_path / "run"
    steps = [
        ["train", "--config", str(TINY), f"run_dir={run}", f"data.shards_dir={tiny_shards}"]
        + ["train.steps=2", "train.warmup_steps=0"],
        ["export", str(run), "export.onnx=false"],
    ]
    for args in steps:
        out = subprocess.run([MLREC, *args], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
    export = run / "export"
    assert sorted(p.name for p in (export / "catalog").glob("vectors.*")) == [
        "vectors.torch.json",
        "vectors.torch.npy",
    ]
    log = tmp_path / "serve.log"
    with running_service(export, log, "serve.backend=torch") as client:
        assert client.get("/health").json()["items"] == len(ids(export))
    assert "loaded precomputed vectors" in log.read_text()
