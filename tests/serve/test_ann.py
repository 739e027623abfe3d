"""ANN indexes over the catalog (export.index) and the /recommend endpoint that searches them:
built by the export step, refused when they do not belong to the vectors served, and answering
as exact search does, with language filters, history excluded, and cold users."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlrec.config import load_config
from mlrec.serve import ann
from mlrec.serve.coldstart import POPULARITY_FILE, write_popularity
from mlrec.serve.ranker import Query, Ranker
from mlrec.serve.vectors import vectors_path, write_catalog_vectors
from tests.export.tiny_export import make_export
from tests.serve.server import running_service

HNSW = "export.index.kind=hnsw"


def config(export: Path, *overrides: str):
    return load_config(export / "mlrec_config.yaml", list(overrides))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_shards) -> Path:
    """An export after `mlrec export`'s serving steps: ONNX vectors, HNSW indexes, popularity."""
    export = make_export(tmp_path_factory.mktemp("ann"), tiny_shards)
    cfg = config(export, HNSW)
    vectors = write_catalog_vectors(export, cfg, "onnx")
    ann.export_index(export, cfg, "onnx", vectors)
    write_popularity(export, cfg.shards_dir, cfg.data.default_language)
    return export


@pytest.fixture(scope="module")
def exact(indexed) -> Ranker:
    """The same export searched exactly (no index), in this process: the expected answers."""
    return Ranker(indexed, config(indexed))


def test_export_writes_an_index_per_language_with_its_recall(indexed, exact):
    folder = ann.index_dir(indexed, "onnx")
    languages = sorted(set(exact.catalog.languages))
    assert sorted(p.name for p in folder.glob("*.faiss")) == sorted(
        ["all.faiss", *(f"{lang}.faiss" for lang in languages)]
    )
    meta = json.loads((folder / ann.META_FILE).read_text())
    assert meta["params"]["kind"] == "hnsw" and meta["rows"] == len(exact.catalog)
    assert sum(meta["languages"].values()) == len(exact.catalog)
    assert meta["recall"]["users"] == 200  # held-out dev users, as many as parity impressions
    # a graph over ~1,400 items, reranked from 10 x k candidates: exact in practice
    assert meta["recall"]["recall@10"] >= 0.99 and meta["recall"]["recall@100"] >= 0.95


def test_ivfpq_finds_what_exact_search_finds_on_clustered_vectors():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 100, 8_000)] + 0.5 * rng.standard_normal((8_000, 32))
    vectors = vectors.astype(np.float32)
    languages = np.asarray(["de", "en"] * 4_000)
    cfg = load_config(None, ["export.index.kind=ivfpq", "serve.nprobe=16"])
    indexes = ann.Indexes.build(vectors, languages, cfg.export.index)
    params = indexes.indexes[ann.ALL]
    # 4 sqrt(n) lists, but no fewer than 39 training points per list
    assert params.nlist == indexes.params["lists"] == 8_000 // 39
    users = (centres[rng.integers(0, 100, 50)] + 0.5 * rng.standard_normal((50, 32))).astype(
        np.float32
    )
    recall = ann.held_out_recall(indexes, vectors, users, cfg)
    assert recall["recall@10"] >= 0.95, recall
    # a language's own index, and rows to skip (deleted items, the history)
    skip = np.zeros(len(vectors), dtype=bool)
    skip[np.flatnonzero(languages == "de")[:2_000]] = True
    rows, scores = ann.top(indexes, vectors, users[0], "de", 10, 16, 64, skip)
    assert (languages[rows] == "de").all() and not skip[rows].any()
    np.testing.assert_allclose(scores, vectors[rows] @ users[0], rtol=1e-5)  # exact scores


def _tamper(indexed: Path, dest: Path, change) -> Path:
    out = shutil.copytree(indexed, dest)
    change(ann.index_dir(out, "onnx"))
    return out


def _meta_vectors_from_elsewhere(folder: Path) -> None:
    meta = json.loads((folder / ann.META_FILE).read_text())
    meta["vectors"]["sha256"] = "0" * 64
    (folder / ann.META_FILE).write_text(json.dumps(meta))


def _truncated(folder: Path) -> None:
    data = (folder / "de.faiss").read_bytes()
    (folder / "de.faiss").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "change,message",
    [(_meta_vectors_from_elsewhere, "sha256 differs"), (_truncated, "de.faiss is unreadable")],
)
def test_an_index_that_does_not_belong_to_the_vectors_is_rebuilt(
    indexed, exact, tmp_path, caplog, change, message
):
    export = _tamper(indexed, tmp_path / "export", change)
    cfg = config(export, HNSW)
    with pytest.raises(ann.StaleIndex, match=message):
        ann.Indexes.load(
            ann.index_dir(export, "onnx"),
            vectors_path(export, "onnx"),
            exact.catalog.languages,
            cfg.export.index,
        )
    with caplog.at_level(logging.WARNING, logger="mlrec.serve.ann"):
        ranker = Ranker(export, cfg)
    assert f"not using the hnsw index in {ann.index_dir(export, 'onnx')}" in caplog.text
    assert message in caplog.text
    history = exact.catalog.ids[:3]
    assert ranker.top_k(history, 5, True, None) == exact.top_k(history, 5, True, None)


def test_another_kind_than_the_exports_is_built_at_start(indexed, caplog):
    with caplog.at_level(logging.INFO, logger="mlrec.serve.ann"):
        ranker = Ranker(indexed, config(indexed, "export.index.kind=flat"))
    assert "built as 'hnsw', configured 'flat'" in caplog.text
    assert ranker.indexes.kind == "flat"


@pytest.fixture(scope="module")
def service(indexed):
    log = indexed.parent / "serve.log"
    overrides = [HNSW, "serve.max_request_items=50", "serve.max_ef_search=200"]
    with running_service(indexed, log, *overrides) as client:
        assert "loaded the hnsw index of" in log.read_text()
        yield client


def _ids(items):
    return [i["id"] for i in items]


def test_recommend_answers_a_batch_as_exact_search_does(service, exact):
    ids = exact.catalog.ids
    users = [
        {"history": ids[:4], "k": 10},
        {"history": ids[10:12], "texts": ["Elections in Berlin"], "languages": ["de", "ru"]},
        {"texts": ["Новости спорта"], "k": 3, "ef": 150},
        {"languages": ["ja"], "k": 4},  # no history at all: cold
    ]
    got = service.post("/recommend", json={"users": users})
    assert got.status_code == 200, got.text
    results = got.json()["results"]
    expected = exact.recommend([Query(**u) for u in users])
    assert [r["source"] for r in results] == ["history", "history", "history", "popularity"]
    for mine, theirs in zip(results, expected, strict=True):
        assert _ids(mine["items"]) == _ids(theirs["items"])
        for a, b in zip(mine["items"], theirs["items"], strict=True):
            assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-4)
    assert len(results[0]["items"]) == 10 and not set(_ids(results[0]["items"])) & set(ids[:4])
    assert all(i.endswith(("@de", "@ru")) for i in _ids(results[1]["items"]))
    assert not set(_ids(results[1]["items"])) & set(ids[10:12])


def test_a_cold_user_gets_the_most_clicked_items_of_the_language(service, indexed, exact):
    clicks = json.loads((indexed / "catalog" / POPULARITY_FILE).read_text())["clicks"]
    row = exact.catalog.row_of  # ties keep catalog order
    german = sorted((-n, row[k], k) for k, n in clicks.items() if k.endswith("@de"))
    got = service.post("/recommend", json={"users": [{"languages": ["de"], "k": 5}]}).json()
    items = got["results"][0]["items"]
    assert [(i["id"], i["score"]) for i in items] == [(k, float(-n)) for n, _, k in german[:5]]
    everyone = service.post("/recommend", json={"users": [{"k": 20}]}).json()["results"][0]
    stories = [i["id"].split("@")[0] for i in everyone["items"]]
    assert len(stories) == len(set(stories)) == 20  # each story once, not once per language


def test_a_cold_user_without_popularity_gets_the_configured_fallback(indexed, tmp_path):
    export = shutil.copytree(indexed, tmp_path / "export")
    (export / "catalog" / POPULARITY_FILE).unlink()
    fallback = ["N3@de", "N5@en", "N9@de"]
    ranker = Ranker(export, config(export, f"serve.cold_items={json.dumps(fallback)}"))
    (result,) = ranker.recommend([Query(languages=["de"], k=5)])
    assert result["source"] == "fallback"
    assert [(i["id"], i["score"]) for i in result["items"]] == [("N3@de", 0.0), ("N9@de", 0.0)]
    bare = Ranker(export, config(export))
    with pytest.raises(ValueError, match="a user without history"):
        bare.recommend([Query(k=5)])


BAD = [
    ({"users": []}, 422, "users is empty"),
    ({"users": [{"history": ["{0}"], "k": 51}]}, 413, "users[0].k has 51"),
    ({"users": [{"history": ["{0}"], "k": 0}]}, 422, "users[0].k must be at least 1"),
    ({"users": [{"history": ["{0}"], "ef": 201}]}, 422, "serve.max_ef_search"),
    ({"users": [{"history": ["{0}"], "nprobe": 0}]}, 422, "users[0].nprobe must be between"),
    ({"users": [{"history": ["{0}"], "languages": ["xx"]}]}, 422, "no catalog item in language"),
    ({"users": [{"history": ["{0}"], "languages": []}]}, 422, "languages is empty"),
    ({"users": [{"history": ["NOPE@de"]}]}, 422, "unknown item ids in users[0].history"),
    ({"users": [{"texts": ["\u0000"]}]}, 422, "NUL"),
    ({"users": [{"texts": ["x" * 10_001]}]}, 413, "characters"),
    ({"users": [{"histroy": ["{0}"]}]}, 422, "extra"),
    ({"users": {"history": ["{0}"]}}, 422, "list"),
    ({"users": [{"history": ["{0}"]}] * 51}, 413, "users has 51"),
]


@pytest.mark.parametrize("body,status,message", BAD)
def test_bad_recommend_requests_get_a_4xx_that_says_why(service, exact, body, status, message):
    text = json.dumps(body).replace("{0}", exact.catalog.ids[0])
    got = service.post("/recommend", content=text, headers={"content-type": "application/json"})
    assert got.status_code == status, got.text
    assert message in got.text
    assert service.get("/health").status_code == 200


def test_topk_searches_the_index_too(service, exact):
    history = exact.catalog.ids[20:23]
    got = service.post("/topk", json={"history": history, "k": 6, "language": "en", "ef": 100})
    assert got.status_code == 200, got.text
    assert _ids(got.json()["items"]) == _ids(exact.top_k(history, 6, True, "en"))


def test_the_openapi_document_describes_the_new_endpoints(indexed):
    from mlrec.serve.app import create_app

    schema = create_app(Ranker(indexed, config(indexed, "serve.docs=true"))).openapi()
    assert {"/recommend", "/items", "/topk"} <= set(schema["paths"])
    assert set(schema["paths"]["/items"]) == {"post", "delete"}
    user = schema["components"]["schemas"]["RecommendUser"]["properties"]
    assert {"history", "texts", "k", "languages", "exclude_history", "nprobe", "ef"} == set(user)
    assert "latest clicks" in user["texts"]["description"]
    answer = schema["components"]["schemas"]["Recommendation"]["properties"]["source"]
    assert "popularity" in answer["description"]
