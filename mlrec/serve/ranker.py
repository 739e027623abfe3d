"""What the service answers, apart from HTTP: rank candidates, recommend from the catalog (its
ANN index, or exact search), embed texts, and change the catalog.

Every request is checked before any work; a bad one raises RequestError with the HTTP status
and a message that says what to change, so the service answers 4xx and carries on. Each request
reads one catalog snapshot (mlrec.serve.live), so a change made meanwhile is in all of its
answer or in none of it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlrec import io
from mlrec.config import Config, ConfigError
from mlrec.evaluation.encode import pad_histories
from mlrec.export.backends import load_backend
from mlrec.export.hf import CATALOG_DIR
from mlrec.languages import format_ref, parse_ref
from mlrec.serve import ann
from mlrec.serve.catalog import Catalog
from mlrec.serve.coldstart import Popular
from mlrec.serve.live import UPDATES_FILE, LiveCatalog, NewItem, Snapshot
from mlrec.serve.vectors import load_or_embed, sources

MAX_TEXT_CHARS = 10_000  # longer texts are refused (413)
# a language code as catalogs write them (de, zh_CN, pt-BR); it is part of every item id
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?")


class RequestError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Query:
    """One user of a /recommend request: a history of ids and/or texts (texts count as the
    latest clicks), what to return, and the search effort."""

    history: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    k: int = 10
    languages: list[str] | None = None
    exclude_history: bool = True
    nprobe: int | None = None
    ef: int | None = None


class Ranker:
    """An export's encoders, its catalog's vectors (precomputed or embedded at start), the ANN
    index over them, the catalog's live changes and the popularity for cold users."""

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
        self.indexes = ann.load_or_build(export_dir, cfg, self.catalog, self.vectors_source)
        self.base_languages = set(self.catalog.languages.tolist())
        # the vectors' identity: a logged vector is reused only under the encoder that made it
        encoder = io.fingerprint([cfg.serve.backend, sources(export_dir, cfg.serve.backend)])
        self.live = LiveCatalog(
            self.catalog, Path(export_dir) / CATALOG_DIR / UPDATES_FILE, encoder, self.embed
        )
        self.popular = Popular.load(export_dir, self.catalog)
        unknown = [i for i in cfg.serve.cold_items if self._row(self.live.snapshot, i) is None]
        if unknown:
            raise ConfigError(f"serve.cold_items has ids not in the catalog: {unknown[:10]}")

    # -- checks ------------------------------------------------------------------------------
    def _check_size(self, name: str, size: int) -> None:
        limit = self.cfg.serve.max_request_items
        if size > limit:
            raise RequestError(
                413,
                f"{name} has {size} entries; this service takes at most {limit} "
                "(serve.max_request_items)",
            )

    def _check_k(self, k: int, name: str = "k") -> None:
        if k < 1:
            raise RequestError(422, f"{name} must be at least 1; got {k}")
        self._check_size(name, k)

    def _effort(self, value: int | None, name: str, default: int, limit: int, key: str) -> int:
        if value is None:
            return default
        if not 1 <= value <= limit:
            raise RequestError(422, f"{name} must be between 1 and {limit} ({key}); got {value}")
        return value

    def _key(self, item_id: str) -> str:
        return format_ref(parse_ref(item_id, self.catalog.default_language))

    def _row(self, snap: Snapshot, item_id: str) -> int | None:
        return snap.row(self._key(item_id))

    def _rows(self, snap: Snapshot, name: str, ids: list[str], empty_ok: bool = False) -> list:
        if not ids and not empty_ok:
            raise RequestError(422, f"{name} is empty: give at least one item id")
        self._check_size(name, len(ids))
        rows = [self._row(snap, i) for i in ids]
        unknown = [i for i, r in zip(ids, rows, strict=True) if r is None]
        if unknown:
            more = len(unknown) - 10
            raise RequestError(
                422,
                f"unknown item ids in {name}: {', '.join(unknown[:10])}"
                f"{f' and {more} more' if more > 0 else ''} (ids look like N123@de; a plain N123 "
                f"means N123@{self.catalog.default_language})",
            )
        return rows

    def _languages(self, snap: Snapshot, languages: list[str] | None, name: str) -> list | None:
        if languages is None:
            return None
        if not languages:
            raise RequestError(422, f"{name} is empty: leave it out for every language")
        known = self.base_languages | set(snap.delta_languages.tolist())
        unknown = [lang for lang in languages if lang not in known]
        if unknown:
            raise RequestError(
                422,
                f"no catalog item in language {unknown[0]!r}; known: {', '.join(sorted(known))}",
            )
        return list(languages)

    # -- scoring -----------------------------------------------------------------------------
    def _users(self, histories: list[np.ndarray]) -> np.ndarray:
        """User vectors of histories given as item vectors ([clicks, dim] each)."""
        # The user encoder saw at most data.max_history clicks in training: keep the latest.
        cut = [h[-self.cfg.data.max_history :] for h in histories]
        stacked = np.concatenate(cut)
        starts = np.cumsum([0] + [len(h) for h in cut])
        positions = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        with self.model_calls:
            return self.backend.users(*pad_histories(stacked, positions))

    def _user(self, history_rows: list[int]) -> np.ndarray:
        return self._users([self.live.snapshot.vectors_of(np.asarray(history_rows))])[0]

    def _listing(self, snap: Snapshot, rows, scores) -> list[dict]:
        out = []
        for r, s in zip(rows, scores, strict=True):
            item = {"id": snap.id(int(r)), "score": float(s)}
            if category := snap.category_of(int(r)):
                item["category"] = category
            out.append(item)
        return out

    def _search(
        self, snap: Snapshot, user: np.ndarray, k: int, languages, skip_rows, nprobe, ef
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the k best live items for `user`: the export's items through the
        index (or exactly), the items added since exactly; merged by exact score."""
        nb = len(self.catalog)
        skip = snap.dead.copy()
        skip[list(skip_rows)] = True
        found_rows, found_scores = [], []
        if self.indexes is not None:
            keys = [ann.ALL] if languages is None else languages
            for key in (key for key in keys if key in self.indexes.indexes):
                rows, scores = ann.top(
                    self.indexes, self.catalog.vectors, user, key, k, nprobe, ef, skip[:nb]
                )
                found_rows.append(rows)
                found_scores.append(scores)
        else:
            scores = self.catalog.vectors @ user
            allowed = ~skip[:nb]
            if languages is not None:
                allowed &= np.isin(self.catalog.languages, languages)
            rows = ann.exact_top(scores, allowed, k)
            found_rows.append(rows)
            found_scores.append(scores[rows])
        delta = snap.delta_rows(languages)
        delta = delta[~skip[delta]]
        if len(delta):
            found_rows.append(delta)
            found_scores.append(snap.vectors_of(delta) @ user)
        rows, scores = np.concatenate(found_rows), np.concatenate(found_scores)
        best = np.argsort(-scores, kind="stable")[:k]
        return rows[best], scores[best]

    # -- requests ----------------------------------------------------------------------------
    def rank(self, history: list[str], candidates: list[str]) -> list[dict]:
        """The candidates, best first, with their scores."""
        snap = self.live.snapshot
        user = self._users([snap.vectors_of(np.asarray(self._rows(snap, "history", history)))])[0]
        rows = np.asarray(self._rows(snap, "candidates", candidates))
        scores = snap.vectors_of(rows) @ user
        order = np.argsort(-scores, kind="stable")
        return self._listing(snap, rows[order], scores[order])

    def top_k(
        self,
        history: list[str],
        k: int,
        exclude_history: bool,
        language: str | None,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> list[dict]:
        """The k best catalog items for this history, optionally in one language only."""
        self._check_k(k)
        if not history:
            raise RequestError(422, "history is empty: give at least one item id")
        languages = None if language is None else [language]
        query = Query(history, [], k, languages, exclude_history, nprobe, ef)
        return self.recommend([query])[0]["items"]

    def recommend(self, queries: list[Query]) -> list[dict]:
        """For each query the top k items of the catalog, from its history, or for a user
        without one, by popularity (then serve.cold_items); every query checked first."""
        self._check_size("users", len(queries))
        if not queries:
            raise RequestError(422, "users is empty: give at least one user")
        snap = self.live.snapshot
        serve = self.cfg.serve
        checked = []
        for n, q in enumerate(queries):
            where = f"users[{n}]"
            self._check_k(q.k, f"{where}.k")
            rows = self._rows(snap, f"{where}.history", q.history, empty_ok=True)
            self._check_size(f"{where}.texts", len(q.texts))
            languages = self._languages(snap, q.languages, f"{where}.languages")
            nprobe = self._effort(
                q.nprobe, f"{where}.nprobe", serve.nprobe, serve.max_nprobe, "serve.max_nprobe"
            )
            ef = self._effort(
                q.ef, f"{where}.ef", serve.ef_search, serve.max_ef_search, "serve.max_ef_search"
            )
            checked.append((q, rows, languages, nprobe, ef))
        texts = [t for q in queries for t in q.texts]
        text_vectors = self.embed(texts) if texts else None
        histories, offset = [], 0
        for q, rows, *_ in checked:
            parts = [snap.vectors_of(np.asarray(rows, dtype=np.int64))]
            if q.texts:
                parts.append(text_vectors[offset : offset + len(q.texts)])
                offset += len(q.texts)
            histories.append(np.concatenate(parts))
        warm = [n for n, h in enumerate(histories) if len(h)]
        users = (
            dict(zip(warm, self._users([histories[n] for n in warm]), strict=True)) if warm else {}
        )
        results = []
        for n, (q, rows, languages, nprobe, ef) in enumerate(checked):
            if n not in users:
                results.append(self._cold(snap, q.k, languages))
                continue
            skip = rows if q.exclude_history else []
            best, scores = self._search(snap, users[n], q.k, languages, skip, nprobe, ef)
            results.append({"source": "history", "items": self._listing(snap, best, scores)})
        return results

    def _cold(self, snap: Snapshot, k: int, languages: list[str] | None) -> dict:
        """A user without history: the most clicked items in training, then serve.cold_items."""
        rows, scores = [], []
        if self.popular is not None:
            rows, scores = self.popular.top(k, languages, snap.dead[: len(self.catalog)])
        source = "popularity" if rows else "fallback"
        for item_id in self.cfg.serve.cold_items:
            row = self._row(snap, item_id)
            if len(rows) >= k:
                break
            if row is None or row in rows or (languages and snap.language_of(row) not in languages):
                continue
            rows.append(row)
            scores.append(0.0)
        if not rows:
            raise RequestError(
                422,
                "a user without history (no ids, no texts), and no popularity (catalog/"
                f"popularity.json) or serve.cold_items for languages {languages or 'any'}",
            )
        return {"source": source, "items": self._listing(snap, rows, scores)}

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

    # -- catalog changes ---------------------------------------------------------------------
    def _check_live(self) -> None:
        if not self.cfg.serve.live_updates:
            raise RequestError(
                403, "this service's catalog is read-only: start it with serve.live_updates=true"
            )

    def put_items(self, items: list[dict]) -> dict:
        """Add or replace items (id, language, text, optional category), encoded now."""
        self._check_live()
        if not items:
            raise RequestError(422, "items is empty: give at least one item")
        self._check_size("items", len(items))
        keys = []
        for n, item in enumerate(items):
            language = item["language"]
            if not _LANGUAGE.fullmatch(language):
                raise RequestError(422, f"items[{n}].language {language!r} is not a language code")
            nid, lang = parse_ref(item["id"], language)
            if lang != language:
                raise RequestError(
                    422, f"items[{n}].id {item['id']!r} names language {lang!r}, not {language!r}"
                )
            if "@" in nid or not nid.strip():
                raise RequestError(422, f"items[{n}].id {item['id']!r} is not an item id")
            keys.append(format_ref((nid, lang)))
        if len(set(keys)) < len(keys):
            raise RequestError(422, "items names an id more than once")
        vectors = self.embed([item["text"] for item in items])
        new = [
            NewItem(key, item["language"], item["text"], item.get("category") or "", vector)
            for key, item, vector in zip(keys, items, vectors, strict=True)
        ]
        snap = self.live.put(new)
        return {"ids": keys, "items": snap.live_items}

    def delete_items(self, ids: list[str]) -> dict:
        """Remove items; if any is unknown, nothing is removed (404 naming them)."""
        self._check_live()
        if not ids:
            raise RequestError(422, "ids is empty: give at least one item id")
        self._check_size("ids", len(ids))
        keys = list(dict.fromkeys(self._key(i) for i in ids))
        snap, missing = self.live.delete(keys)
        if missing:
            raise RequestError(
                404, f"not in the catalog (nothing removed): {', '.join(missing[:10])}"
            )
        return {"ids": keys, "items": snap.live_items}
