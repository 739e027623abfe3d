"""What the service answers, apart from HTTP: rank candidates, top-k items, embed texts.

Every request is checked before any work; a bad one raises RequestError with the HTTP status
and a message that says what to change, so the service answers 4xx and carries on.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mlrec.config import Config
from mlrec.evaluation.encode import pad_histories
from mlrec.export.backends import load_backend
from mlrec.serve.catalog import Catalog, UnknownItems
from mlrec.serve.vectors import load_or_embed

MAX_TEXT_CHARS = 10_000  # longer texts are refused (413)


class RequestError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Ranker:
    """An export's encoders plus its catalog's vectors (precomputed or embedded at start)."""

    def __init__(self, export_dir: str | Path, cfg: Config) -> None:
        from mlrec.data.tokenizer import load_tokenizer

        self.cfg = cfg
        trust = cfg.model.trust_remote_code  # the command line's opt-in, never the export's
        self.backend = load_backend(export_dir, cfg.serve.backend, cfg.serve.threads, trust)
        self.tokenizer = load_tokenizer(export_dir, trust)
        self.catalog = Catalog(export_dir, cfg.data.default_language)
        self.vectors_source = load_or_embed(
            self.catalog, export_dir, cfg, self.backend, self.tokenizer.pad_token_id
        )
        # Texts are cut before tokenising: tokenising all 10,000 characters of up to 1000 texts,
        # to keep a few dozen tokens of each, took the server from 1.1 to 11 GB under 16
        # concurrent requests. A token spans at most the vocabulary's longest entry in
        # characters, twice that allowing for normalisation composing two characters into one,
        # so the first max_item_tokens tokens of the cut text are those of the whole text. What
        # makes no token of its own (a run of unknown characters fused into one <unk>, or
        # whitespace a WordPiece tokenizer drops) could push them past the cut; no real text
        # has a few hundred such characters at its start, and the test checks real ones.
        longest = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.text_chars = cfg.data.max_item_tokens * 2 * longest
        # Tokenising and model calls at once, whatever the number of request threads: each
        # holds its batch's tokens and activations, and more than the cores can run only adds
        # memory and latency.
        self.model_calls = threading.BoundedSemaphore(cfg.serve.max_concurrent)

    def _check_size(self, name: str, size: int) -> None:
        limit = self.cfg.serve.max_request_items
        if size > limit:
            raise RequestError(
                413,
                f"{name} has {size} entries; this service takes at most {limit} "
                "(serve.max_request_items)",
            )

    def _rows(self, name: str, ids: list[str]) -> list[int]:
        if not ids:
            raise RequestError(422, f"{name} is empty: give at least one item id")
        self._check_size(name, len(ids))
        try:
            return self.catalog.rows(ids)
        except UnknownItems as err:
            shown = ", ".join(err.args[0][:10])
            more = len(err.args[0]) - 10
            raise RequestError(
                422,
                f"unknown item ids in {name}: {shown}{f' and {more} more' if more > 0 else ''} "
                f"(ids look like N123@de; a plain N123 means "
                f"N123@{self.catalog.default_language})",
            ) from None

    def _user(self, history_rows: list[int]) -> np.ndarray:
        # The user encoder saw at most data.max_history clicks in training: keep the latest.
        rows = history_rows[-self.cfg.data.max_history :]
        history, mask = pad_histories(self.catalog.vectors, [rows])
        with self.model_calls:
            return self.backend.users(history, mask)[0]

    def _listing(self, rows, scores) -> list[dict]:
        return [
            {"id": self.catalog.ids[r], "score": float(s)}
            for r, s in zip(rows, scores, strict=True)
        ]

    def rank(self, history: list[str], candidates: list[str]) -> list[dict]:
        """The candidates, best first, with their scores."""
        user = self._user(self._rows("history", history))
        rows = np.asarray(self._rows("candidates", candidates))
        scores = self.catalog.vectors[rows] @ user
        order = np.argsort(-scores, kind="stable")
        return self._listing(rows[order], scores[order])

    def top_k(
        self, history: list[str], k: int, exclude_history: bool, language: str | None
    ) -> list[dict]:
        """The k best catalog items for this history, optionally in one language only."""
        if k < 1:
            raise RequestError(422, f"k must be at least 1; got {k}")
        self._check_size("k", k)
        history_rows = self._rows("history", history)
        scores = self.catalog.vectors @ self._user(history_rows)
        allowed = np.ones(len(self.catalog), dtype=bool)
        if language is not None:
            allowed &= self.catalog.languages == language
            if not allowed.any():
                known = ", ".join(sorted(set(self.catalog.languages)))
                raise RequestError(422, f"no catalog item in language {language!r}; known: {known}")
        if exclude_history:
            allowed[history_rows] = False
        rows = np.flatnonzero(allowed)
        k = min(k, len(rows))
        best = rows[np.argpartition(-scores[rows], k - 1)[:k]]
        best = best[np.argsort(-scores[best], kind="stable")]
        return self._listing(best, scores[best])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Item vectors of free texts, tokenised as the item table was."""
        if not texts:
            raise RequestError(422, "texts is empty: give at least one text")
        self._check_size("texts", len(texts))
        longest = max(len(t) for t in texts)
        if longest > MAX_TEXT_CHARS:
            raise RequestError(413, f"a text has {longest} characters; at most {MAX_TEXT_CHARS}")
        cut = [t[: self.text_chars] for t in texts]
        step = self.cfg.serve.batch_size  # bounded activations, whatever the request's size
        return np.concatenate(
            [self._embed_batch(cut[i : i + step]) for i in range(0, len(cut), step)]
        )

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        with self.model_calls:
            encoded = self.tokenizer(
                [self.cfg.data.item_instruction + t for t in texts],  # as the item table
                truncation=True,
                max_length=self.cfg.data.max_item_tokens,
                padding=True,
                return_tensors="np",
            )
            return self.backend.items(
                encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
            )
