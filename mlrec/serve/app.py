"""The HTTP layer of the ranking service: FastAPI routes over a Ranker, served by uvicorn.

  GET  /health  -> {"status", "backend", "items", "dim"}
  POST /rank    {"history": [ids], "candidates": [ids]}              -> {"items": [{id, score}]}
  POST /topk    {"history": [ids], "k": 10, "exclude_history": true,
                 "language": null}                                    -> {"items": [{id, score}]}
  POST /embed   {"texts": [str]}                                      -> {"dim", "vectors"}
  POST /recommend {"users": [{"history": [ids], "texts": [str], "k": 10, "languages": null,
                   "exclude_history": true, "nprobe": null, "ef": null}]}
                                          -> {"results": [{"source", "items": [{id, score}]}]}
  POST /items   {"items": [{"id", "language", "text", "category"}]}   -> {"ids", "items"}
  DELETE /items {"ids": [ids]}                                        -> {"ids", "items"}

/topk and /recommend search the catalog's ANN index (export.index) or, without one, exactly.
/items changes the catalog while serving (serve.live_updates; see mlrec.serve.live).

Request bodies are validated strictly (wrong types and unknown fields are a 422, not a guess);
see mlrec.serve.ranker for the checks on their content. Every answer is ASCII JSON, so no text
a client sent (a lone surrogate, say) can break the answer that names it.

The service has no authentication: it binds 127.0.0.1 by default and belongs behind a proxy
that authenticates, or on a private network. FastAPI's /docs, /redoc and /openapi.json are off
unless serve.docs is set.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlrec.serve.limits import BodySizeLimit, InFlightLimit
from mlrec.serve.ranker import Query, Ranker, RequestError

log = logging.getLogger(__name__)

# Bodies larger than this are refused (413) without being read whole (1000 ids are ~20 kB).
MAX_BODY_BYTES = 4 << 20


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: Starlette's own encodes UTF-8, which fails
    (a 500 and a reset connection) on a lone surrogate echoed from a request."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="after")
    def _usable_text(self):
        """Every string, alone or in a list, must be text that the tokenizer, the catalog and an
        answer naming it can take; the error names the field (and index) at fault."""
        for name, value in self:
            for index, text in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(text, str) and (problem := _text_problem(text)):
                    where = f"{name}[{index}]" if isinstance(value, list) else name
                    raise ValueError(f"{where} {problem}")
        return self


# JSON can carry what is no text: a lone surrogate ("\\ud800"; json.loads joins real pairs, so
# any surrogate left is lone), on which the tokenizer and UTF-8 encoding fail, and NUL, at which
# C code (tokenizers, logs, proxies) may cut a string.
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _text_problem(text: str) -> str | None:
    """Why `text` is unusable, or None. Blank strings are refused too: no item id is blank, and
    a blank text's vector would be that of padding alone."""
    if not text.strip():
        return "is empty (or only whitespace)"
    bad = _BAD_CHARACTER.search(text)
    if bad is None:
        return None
    if bad.group() == "\x00":
        return "contains a NUL character"
    return "is not valid Unicode text (a lone surrogate)"


class RankRequest(_Strict):
    history: list[str]
    candidates: list[str]


class TopKRequest(_Strict):
    history: list[str]
    k: int = 10
    exclude_history: bool = True
    language: str | None = None
    nprobe: int | None = None
    ef: int | None = None


class EmbedRequest(_Strict):
    texts: list[str]


class RecommendUser(_Strict):
    history: list[str] = Field(
        default_factory=list, description="clicked item ids, oldest first (N123@de)"
    )
    texts: list[str] = Field(
        default_factory=list,
        description="raw texts of clicked items in any language, read as the latest clicks",
    )
    k: int = Field(10, description="items to return, at most serve.max_request_items")
    languages: list[str] | None = Field(None, description="only items in these languages")
    exclude_history: bool = Field(True, description="leave the history's items out")
    nprobe: int | None = Field(None, description="ivfpq lists to search (serve.max_nprobe)")
    ef: int | None = Field(None, description="hnsw search beam (serve.max_ef_search)")


class RecommendRequest(_Strict):
    users: list[RecommendUser] = Field(description="one query per user; answered in order")


class ItemScore(BaseModel):
    id: str
    score: float = Field(description="dot product with the user; training clicks when cold")
    category: str | None = None


class Recommendation(BaseModel):
    source: str = Field(
        description="history: the model; popularity: no history, most clicked in training "
        "(then serve.cold_items); fallback: no history, serve.cold_items only"
    )
    items: list[ItemScore]


class RecommendResponse(BaseModel):
    results: list[Recommendation]


class NewItemBody(_Strict):
    id: str = Field(description="N123 or N123@de; a known id is replaced")
    language: str
    text: str = Field(description="encoded by the served item encoder")
    category: str | None = None


class PutItemsRequest(_Strict):
    items: list[NewItemBody]


class DeleteItemsRequest(_Strict):
    ids: list[str]


class ItemsResponse(BaseModel):
    ids: list[str] = Field(description="the ids changed, as N123@de")
    items: int = Field(description="items in the catalog now")


def create_app(ranker: Ranker) -> FastAPI:
    docs = ranker.cfg.serve.docs
    app = FastAPI(
        title="mlrec ranking service",
        version="1",
        default_response_class=AsciiJSONResponse,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )

    # Chunked bodies carry no Content-Length, so the limit counts the bytes as they arrive.
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    # outermost: a request refused for load is refused before its body is read
    app.add_middleware(InFlightLimit, max_in_flight=ranker.cfg.serve.max_in_flight)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return AsciiJSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # where and why, without FastAPI's echo of the input (which may be the bad text itself)
        detail = [
            {"type": e.get("type", ""), "loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
            for e in err.errors()
        ]
        return AsciiJSONResponse({"detail": detail}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "backend": ranker.cfg.serve.backend,
            "items": ranker.live.snapshot.live_items,
            "dim": int(ranker.backend.dim),
        }

    @app.post("/rank")
    def rank(body: RankRequest) -> dict:
        return {"items": ranker.rank(body.history, body.candidates)}

    @app.post("/topk")
    def top_k(body: TopKRequest) -> dict:
        items = ranker.top_k(
            body.history, body.k, body.exclude_history, body.language, body.nprobe, body.ef
        )
        return {"items": items}

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    def recommend(body: RecommendRequest) -> dict:
        queries = [Query(**user.model_dump()) for user in body.users]
        return {"results": ranker.recommend(queries)}

    @app.post("/items", response_model=ItemsResponse)
    def put_items(body: PutItemsRequest) -> dict:
        return ranker.put_items([item.model_dump() for item in body.items])

    @app.delete("/items", response_model=ItemsResponse)
    def delete_items(body: DeleteItemsRequest) -> dict:
        return ranker.delete_items(body.ids)

    @app.post("/embed")
    def embed(body: EmbedRequest) -> dict:
        vectors = ranker.embed(body.texts)
        return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}

    return app


def serve(export_dir, cfg) -> None:
    """Load or embed the catalog, then answer on cfg.serve.host:port until interrupted."""
    import uvicorn

    ranker = Ranker(export_dir, cfg)
    if ranker.indexes is not None:
        from mlrec.serve.ann import one_thread_per_search

        one_thread_per_search()
    log.info("serving %s on http://%s:%d", export_dir, cfg.serve.host, cfg.serve.port)
    uvicorn.run(create_app(ranker), host=cfg.serve.host, port=cfg.serve.port, log_level="warning")
