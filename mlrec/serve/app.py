"""The HTTP layer of the ranking service: FastAPI routes over a Ranker, served by uvicorn.

  GET  /health  -> {"status", "backend", "items", "dim"}
  POST /rank    {"history": [ids], "candidates": [ids]}              -> {"items": [{id, score}]}
  POST /topk    {"history": [ids], "k": 10, "exclude_history": true,
                 "language": null}                                    -> {"items": [{id, score}]}
  POST /embed   {"texts": [str]}                                      -> {"dim", "vectors"}

Request bodies are validated strictly (wrong types and unknown fields are a 422, not a guess);
see mlrec.serve.ranker for the checks on their content.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from mlrec.serve.limits import BodySizeLimit
from mlrec.serve.ranker import Ranker, RequestError

log = logging.getLogger(__name__)

# Bodies larger than this are refused (413) without being read whole (1000 ids are ~20 kB).
MAX_BODY_BYTES = 4 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RankRequest(_Strict):
    history: list[str]
    candidates: list[str]


class TopKRequest(_Strict):
    history: list[str]
    k: int = 10
    exclude_history: bool = True
    language: str | None = None


class EmbedRequest(_Strict):
    texts: list[str]


def create_app(ranker: Ranker) -> FastAPI:
    app = FastAPI(title="mlrec ranking service", version="1")

    # Chunked bodies carry no Content-Length, so the limit counts the bytes as they arrive.
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "backend": ranker.cfg.serve.backend,
            "items": len(ranker.catalog),
            "dim": int(ranker.backend.dim),
        }

    @app.post("/rank")
    def rank(body: RankRequest) -> dict:
        return {"items": ranker.rank(body.history, body.candidates)}

    @app.post("/topk")
    def top_k(body: TopKRequest) -> dict:
        return {"items": ranker.top_k(body.history, body.k, body.exclude_history, body.language)}

    @app.post("/embed")
    def embed(body: EmbedRequest) -> dict:
        vectors = ranker.embed(body.texts)
        return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}

    return app


def serve(export_dir, cfg) -> None:
    """Load or embed the catalog, then answer on cfg.serve.host:port until interrupted."""
    import uvicorn

    ranker = Ranker(export_dir, cfg)
    log.info("serving %s on http://%s:%d", export_dir, cfg.serve.host, cfg.serve.port)
    uvicorn.run(create_app(ranker), host=cfg.serve.host, port=cfg.serve.port, log_level="warning")
