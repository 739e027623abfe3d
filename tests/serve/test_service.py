"""The ranking service as users meet it: a real `mlrec serve` process on 127.0.0.1, over HTTP."""

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from mlrec.serve.app import MAX_BODY_BYTES
from tests.export.tiny_export import make_export
from tests.serve.server import running_service

LIMIT = 50  # serve.max_request_items for these tests


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_shards) -> Path:
    return make_export(tmp_path_factory.mktemp("serve"), tiny_shards)


@pytest.fixture(scope="module")
def service(export):
    overrides = [f"serve.max_request_items={LIMIT}"]
    with running_service(export, export.parent / "serve.log", *overrides) as client:
        yield client


@pytest.fixture(scope="module")
def catalog(export) -> list[str]:
    return [line.split("\t")[0] for line in (export / "catalog" / "index.tsv").open()]


@pytest.fixture(scope="module")
def reference(export):
    """The same export on the torch backend, in this process, for the expected answers."""
    from mlrec.config import load_config
    from mlrec.serve.ranker import Ranker

    cfg = load_config(export / "mlrec_config.yaml", ["serve.backend=torch"])
    return Ranker(export, cfg)


def test_health_reports_the_catalog(service, catalog, reference):
    body = service.get("/health").json()
    assert body == {
        "status": "ok",
        "backend": "onnx",
        "items": len(catalog),
        "dim": reference.backend.dim,
    }


def test_rank_orders_candidates_as_the_torch_model_scores_them(service, catalog, reference):
    history, candidates = catalog[:5], catalog[100:130:3]
    got = service.post("/rank", json={"history": history, "candidates": candidates})
    assert got.status_code == 200, got.text
    items = got.json()["items"]
    assert sorted(i["id"] for i in items) == sorted(candidates)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    expected = {i["id"]: i["score"] for i in reference.rank(history, candidates)}
    for item in items:
        assert item["score"] == pytest.approx(expected[item["id"]], rel=1e-3, abs=1e-4)


def test_plain_ids_mean_the_default_language(service, catalog):
    english = [key for key in catalog if key.endswith("@en")][:4]
    plain = [key.removesuffix("@en") for key in english]
    a = service.post("/rank", json={"history": plain[:2], "candidates": plain[2:]}).json()
    b = service.post("/rank", json={"history": english[:2], "candidates": english[2:]}).json()
    assert a == b


def test_topk_returns_the_best_catalog_items(service, catalog, reference):
    history = catalog[10:14]
    got = service.post("/topk", json={"history": history, "k": 7}).json()["items"]
    assert len(got) == 7 and not {i["id"] for i in got} & set(history)
    user = reference._user(reference.catalog.rows(history))
    scores = reference.catalog.vectors @ user
    scores[reference.catalog.rows(history)] = -np.inf
    best = [catalog[r] for r in np.argsort(-scores)[:7]]
    assert [i["id"] for i in got][:3] == best[:3]  # fp32 ONNX vs torch: same leaders
    german = service.post("/topk", json={"history": history, "k": 5, "language": "de"}).json()
    assert [i["id"].endswith("@de") for i in german["items"]] == [True] * 5


def test_embed_returns_one_vector_per_text(service, reference):
    texts = ["Elections in Berlin", "Новости спорта", "Elections in Berlin"]
    got = service.post("/embed", json={"texts": texts})
    assert got.status_code == 200, got.text
    body = got.json()
    vectors = np.asarray(body["vectors"])
    assert vectors.shape == (3, reference.backend.dim) == (3, body["dim"])
    np.testing.assert_allclose(vectors[0], vectors[2], rtol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    np.testing.assert_allclose(vectors, reference.embed(texts), rtol=1e-3, atol=1e-4)


BAD_REQUESTS = [
    ("/rank", {"history": ["N_NOPE@en"], "candidates": ["N_NOPE@en"]}, 422, "unknown item ids"),
    ("/rank", {"history": [], "candidates": ["{0}"]}, 422, "history is empty"),
    ("/rank", {"history": ["{0}"], "candidates": []}, 422, "candidates is empty"),
    ("/rank", {"history": ["{0}"], "candidates": ["{0}"] * (LIMIT + 1)}, 413, "at most 50"),
    ("/rank", {"history": [1, 2], "candidates": ["{0}"]}, 422, "string"),
    ("/rank", {"history": "{0}", "candidates": ["{0}"]}, 422, "list"),
    ("/rank", {"history": ["{0}"]}, 422, "missing"),
    ("/rank", {"histroy": ["{0}"], "candidates": ["{0}"]}, 422, "extra"),
    ("/topk", {"history": ["{0}"], "k": 0}, 422, "k must be at least 1"),
    ("/topk", {"history": ["{0}"], "k": "5"}, 422, "integer"),
    ("/topk", {"history": ["{0}"], "k": LIMIT + 1}, 413, "k has 51"),
    ("/topk", {"history": ["{0}"], "language": "xx"}, 422, "no catalog item in language"),
    ("/embed", {"texts": []}, 422, "texts is empty"),
    ("/embed", {"texts": ["x" * 10_001]}, 413, "characters"),
    ("/embed", {"texts": [None]}, 422, "string"),
]


@pytest.mark.parametrize("path,body,status,message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_that_says_why(service, catalog, path, body, status, message):
    def fill(value):
        if isinstance(value, str):
            return value.format(catalog[0])
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    got = service.post(path, json={k: fill(v) for k, v in body.items()})
    assert got.status_code == status, got.text
    assert message in got.text
    assert service.get("/health").status_code == 200  # still serving


def test_malformed_and_oversize_bodies_are_refused(service):
    got = service.post("/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert got.status_code == 422 and "JSON" in got.text
    huge = b'{"texts": ["' + b"x" * (5 << 20) + b'"]}'
    got = service.post("/embed", content=huge, headers={"content-type": "application/json"})
    assert got.status_code == 413 and "request body" in got.text
    assert service.get("/health").status_code == 200


JSON = {"content-type": "application/json"}


def _pieces(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_bodies_are_read_and_limited_like_declared_ones(service, catalog):
    # a generator body: httpx sends it chunked, with no Content-Length to check
    body = json.dumps({"history": catalog[:3], "candidates": catalog[3:9]}).encode()
    got = service.post("/rank", content=_pieces(body, 7), headers=JSON)
    assert got.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in got.request.headers
    assert got.status_code == 200 and len(got.json()["items"]) == 6, got.text
    huge = b'{"texts": ["' + b"x" * (MAX_BODY_BYTES + (1 << 20)) + b'"]}'
    got = service.post("/embed", content=_pieces(huge, 1 << 16), headers=JSON)
    assert got.status_code == 413 and "request body of more than" in got.text
    assert service.get("/health").status_code == 200


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        received = sock.recv(1 << 16)
        assert received, f"the service closed the connection without an answer: {data!r}"
        data += received
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
    while len(body) < length:
        body += sock.recv(1 << 16)
    return head + b"\r\n\r\n" + body


def test_an_endless_chunked_body_is_refused_once_past_the_limit(service):
    """The 413 comes while the body is still arriving: nothing waits for (or holds) all of it."""
    url = service.base_url
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * (1 << 16)
        for _ in range(MAX_BODY_BYTES // len(piece) + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        # no closing zero-length chunk: the body has no end and no declared size
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"request body of more than" in answer
    assert service.get("/health").status_code == 200
