"""Approximate nearest-neighbour indexes over the catalog vectors (FAISS), built by `mlrec export`.

  catalog/ann/<backend>/all.faiss     every item of the catalog
  catalog/ann/<backend>/<lang>.faiss  the items of one language (a language filter searches it)
  catalog/ann/<backend>/index.json    what they were built from and how

An index belongs to one vectors file (mlrec.serve.vectors): index.json holds that file's sha256,
its rows and dim, and the rows per language. The service uses the indexes only when it loaded
exactly those vectors; otherwise it builds them at start and logs why, as it embeds a catalog
whose vectors are stale. A FAISS label is a position within its index; the catalog row is
recovered from the languages column, which the vectors file already ties to the catalog.

Every answer's scores are exact dot products with the full vectors: IVF-PQ proposes `rerank` x k
candidates by its compressed codes and they are scored again exactly, so the codes only decide
which items are looked at; HNSW and flat indexes hold the full vectors and propose k.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlrec import io
from mlrec.config import Config, ConfigError, IndexConfig
from mlrec.export.hf import CATALOG_DIR

log = logging.getLogger(__name__)

FORMAT = 1
ALL = ""  # the key of the index over every language
META_FILE = "index.json"


class StaleIndex(ValueError):
    """Index files that do not belong to the vectors the service holds."""


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ConfigError(
            f"export.index.kind needs FAISS ({err}): pip install 'mlrec[ann]', or set "
            "export.index.kind=none (exact search)"
        ) from err
    return faiss


def index_dir(export_dir: str | Path, backend: str) -> Path:
    return Path(export_dir) / CATALOG_DIR / "ann" / backend


def _file(key: str) -> str:
    return f"{key or 'all'}.faiss"


def resolved_params(cfg: IndexConfig, rows: int, dim: int) -> dict[str, Any]:
    """The build parameters for `rows` vectors: the config's, with its 0s ("automatic") chosen.

    IVF wants about 39 training points per list (FAISS warns below that), so small catalogs get
    fewer lists rather than a useless index.
    """
    params: dict[str, Any] = {"kind": cfg.kind, "rerank": cfg.rerank}
    if cfg.kind == "hnsw":
        params |= {"m": cfg.hnsw_m, "ef_construction": cfg.hnsw_ef_construction}
    elif cfg.kind == "ivfpq":
        lists = cfg.ivf_lists or round(4 * math.sqrt(rows))
        params["lists"] = int(max(1, min(lists, rows // 39)))
        pq_m = cfg.pq_m or max(1, dim // 4)
        while dim % pq_m:  # the largest divisor of dim not above the asked number
            pq_m -= 1
        if cfg.pq_m and pq_m != cfg.pq_m:
            raise ConfigError(
                f"export.index.pq_m must divide the vectors' dim {dim}; got {cfg.pq_m}"
            )
        params["pq_m"] = pq_m
    return params


def build(vectors: np.ndarray, params: dict[str, Any]):
    """A FAISS inner-product index of `vectors` (float32 [rows, dim]) with these parameters."""
    faiss = _faiss()
    rows, dim = vectors.shape
    kind = params["kind"]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    elif kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        # 4-bit codes searched with SIMD lookups (FAISS's "fast scan"): training 16 centroids
        # per sub-quantizer instead of 256 took a 20,000-item catalog from 102 s to under 10 s
        # here, and the exact rerank recovers what the coarser codes lose
        index = faiss.IndexIVFPQFastScan(
            quantizer, dim, params["lists"], params["pq_m"], 4, faiss.METRIC_INNER_PRODUCT
        )
        # k-means on a sample: 40 points per list train it about as well as all of them
        sample = min(rows, max(40 * params["lists"], 1024))
        pick = np.random.default_rng(0).choice(rows, sample, replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(pick)]))
    else:
        raise ValueError(f"no index to build for kind {kind!r}")
    if rows:
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


class Indexes:
    """The all-languages index and one per language, over the first `rows` catalog rows."""

    def __init__(self, params: dict[str, Any], indexes: dict[str, Any], languages: np.ndarray):
        self.params = params
        self.kind = params["kind"]
        self.indexes = indexes
        self.rows = len(languages)
        # index label -> catalog row, per language (the all index's labels are the rows)
        self.labels = {ALL: np.arange(self.rows)}
        for lang in indexes.keys() - {ALL}:
            self.labels[lang] = np.flatnonzero(languages == lang)

    @classmethod
    def build(cls, vectors: np.ndarray, languages: np.ndarray, cfg: IndexConfig) -> Indexes:
        start = time.perf_counter()
        params = resolved_params(cfg, len(vectors), vectors.shape[1])
        indexes = {ALL: build(vectors, params)}
        for lang in sorted(set(languages.tolist())):
            rows = np.flatnonzero(languages == lang)
            indexes[lang] = build(vectors[rows], resolved_params(cfg, len(rows), vectors.shape[1]))
        params["build_seconds"] = time.perf_counter() - start
        log.info(
            "built %s indexes (all + %d languages) over %d items in %.1f s",
            params["kind"], len(indexes) - 1, len(vectors), params["build_seconds"],
        )  # fmt: skip
        return cls(params, indexes, languages)

    def save(self, folder: Path, vectors_file: Path) -> None:
        """Write every index, then the metadata (last: it vouches for the files before it)."""
        faiss = _faiss()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)
        for key, index in self.indexes.items():
            tmp = io.temporary(folder / _file(key))
            try:
                faiss.write_index(index, str(tmp))
                io.publish(tmp, folder / _file(key))
            finally:
                tmp.unlink(missing_ok=True)
        meta = {
            "format": FORMAT,
            "params": self.params,
            "vectors": {"file": vectors_file.name, "sha256": io.sha256(vectors_file)},
            "rows": self.rows,
            "languages": {k: len(v) for k, v in self.labels.items() if k != ALL},
        }
        io.write_text(folder / META_FILE, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, vectors_file: Path, languages: np.ndarray, cfg: IndexConfig):
        """The saved indexes if they were built from `vectors_file` (rows in the order of
        `languages`) with the configured kind; StaleIndex says what differs otherwise."""
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise StaleIndex(f"{meta_path} is missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise StaleIndex(f"{meta_path} is unreadable: {err}") from None
        if meta.get("format") != FORMAT:
            raise StaleIndex(f"{meta_path}: format {meta.get('format')!r}, not {FORMAT}")
        if meta.get("params", {}).get("kind") != cfg.kind:
            raise StaleIndex(f"built as {meta['params'].get('kind')!r}, configured {cfg.kind!r}")
        if meta.get("vectors", {}).get("sha256") != io.sha256(vectors_file):
            raise StaleIndex(f"built from another {vectors_file.name} (sha256 differs)")
        counts = {
            str(k): int(n) for k, n in zip(*np.unique(languages, return_counts=True), strict=True)
        }
        if meta.get("rows") != len(languages) or meta.get("languages") != counts:
            raise StaleIndex(f"built for {meta.get('rows')} rows in other languages")
        faiss = _faiss()
        indexes = {}
        for key in (ALL, *counts):
            path = folder / _file(key)
            try:
                indexes[key] = faiss.read_index(str(path))
            except RuntimeError as err:  # FAISS reports a missing or truncated file so
                raise StaleIndex(f"{path} is unreadable: {err}".splitlines()[0]) from None
            expected = meta["rows"] if key == ALL else counts[key]
            if indexes[key].ntotal != expected:
                raise StaleIndex(f"{path} holds {indexes[key].ntotal} items, not {expected}")
        return cls(meta["params"], indexes, languages)

    def candidates(
        self, user: np.ndarray, key: str, fetch: int, nprobe: int, ef: int
    ) -> np.ndarray:
        """Catalog rows of up to `fetch` approximate best items for `user` in index `key`."""
        faiss = _faiss()
        index = self.indexes[key]
        fetch = min(fetch, index.ntotal)
        if fetch == 0:
            return np.zeros(0, dtype=np.int64)
        # per-call parameters: nothing shared is changed, so concurrent searches are safe
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(ef, fetch))
        elif self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        else:
            params = None
        _, labels = index.search(user[None].astype(np.float32), fetch, params=params)
        labels = labels[0][labels[0] >= 0]
        return self.labels[key][labels]


def one_thread_per_search() -> None:
    """FAISS runs one search on all cores (OpenMP); a service already runs one request per
    thread, and a team of threads per request only makes them wait for each other's cores."""
    _faiss().omp_set_num_threads(1)


def top(
    indexes: Indexes,
    vectors: np.ndarray,
    user: np.ndarray,
    key: str,
    k: int,
    nprobe: int,
    ef: int,
    skip: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and exact scores of the k best items of index `key` for `user`, best first, leaving
    out rows where `skip` (bool, per catalog row) is set. When skipped rows eat into the
    candidates, the index is asked again for four times as many, up to all of its items."""
    # IVF-PQ ranks by compressed codes, so it proposes more than k; a graph or flat index
    # already holds the full vectors and ranks them exactly
    fetch = k * indexes.params["rerank"] if indexes.kind == "ivfpq" else k
    size = indexes.indexes[key].ntotal
    while True:
        rows = indexes.candidates(user, key, fetch, nprobe, ef)
        if skip is not None:
            rows = rows[~skip[rows]]
        if len(rows) >= k or fetch >= size:
            break
        fetch *= 4
    scores = vectors[rows] @ user
    best = np.argsort(-scores, kind="stable")[:k]
    return rows[best], scores[best]


def exact_top(scores: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best `scores` among the `allowed` ones (bool per row), best first."""
    rows = np.flatnonzero(allowed)
    k = min(k, len(rows))
    if k == 0:
        return rows
    best = rows[np.argpartition(-scores[rows], k - 1)[:k]]
    return best[np.argsort(-scores[best], kind="stable")]


def write_indexes(export_dir: str | Path, backend: str, vectors_file: Path, cfg: Config) -> Indexes:
    """Build the configured indexes over a saved vectors file and write them into the export."""
    from mlrec.serve.catalog import Catalog

    vectors = np.load(vectors_file, allow_pickle=False)
    languages = Catalog(export_dir, cfg.data.default_language).languages
    indexes = Indexes.build(vectors, languages, cfg.export.index)
    folder = index_dir(export_dir, backend)
    indexes.save(folder, vectors_file)
    log.info("%s index for `mlrec serve`: %s", cfg.export.index.kind, folder)
    return indexes


def held_out_recall(
    indexes: Indexes, vectors: np.ndarray, users: np.ndarray, cfg: Config, ks=(10, 100)
) -> dict[str, Any]:
    """recall@k of the all-languages index against exact search, for these user vectors, at the
    service's default nprobe and ef: the share of the exact top k that the index returns."""
    out: dict[str, Any] = {
        "users": len(users),
        "nprobe": cfg.serve.nprobe,
        "ef": cfg.serve.ef_search,
    }
    everything = np.ones(len(vectors), dtype=bool)
    for k in ks:
        k_ = min(k, len(vectors))
        hits = []
        for user in users:
            exact = exact_top(vectors @ user, everything, k_)
            got, _ = top(indexes, vectors, user, ALL, k_, cfg.serve.nprobe, cfg.serve.ef_search)
            hits.append(len(np.intersect1d(exact, got)) / k_)
        out[f"recall@{k}"] = float(np.mean(hits)) if hits else None
    return out


def load_or_build(export_dir: str | Path, cfg: Config, catalog, vectors_source: str):
    """The indexes for the service: the export's when they belong to the vectors it loaded, else
    built now (and not saved: the export is `mlrec export`'s to write). None for kind none."""
    from mlrec.serve.vectors import vectors_path

    kind = cfg.export.index.kind
    if kind == "none":
        return None
    folder = index_dir(export_dir, cfg.serve.backend)
    if vectors_source == "loaded":
        path = Path(cfg.serve.catalog_vectors or vectors_path(export_dir, cfg.serve.backend))
        try:
            indexes = Indexes.load(folder, path, catalog.languages, cfg.export.index)
        except StaleIndex as err:
            log.warning("not using the %s index in %s: %s; building it now", kind, folder, err)
        else:
            log.info("loaded the %s index of %d catalog items (%s)", kind, len(catalog), folder)
            return indexes
    else:
        log.info("the catalog was embedded at start: building its %s index now", kind)
    return Indexes.build(catalog.vectors, catalog.languages, cfg.export.index)


def export_index(
    export_dir: str | Path, cfg: Config, backend_name: str, vectors_file: Path
) -> dict:
    """`mlrec export`'s step: build and save the indexes, then measure their recall@10/@100
    against exact search for held-out users (the first export.parity_impressions dev
    impressions with a history), recorded in index.json and in the parity report."""
    from itertools import islice

    from mlrec.data.layout import dev_splits, shard_files
    from mlrec.data.loader import read_impressions
    from mlrec.evaluation.encode import pad_histories
    from mlrec.export.backends import load_backend
    from mlrec.export.parity import PARITY_FILE

    indexes = write_indexes(export_dir, backend_name, vectors_file, cfg)
    vectors = np.load(vectors_file, allow_pickle=False)
    impressions = read_impressions(shard_files(cfg.shards_dir, dev_splits(cfg.shards_dir)[0]))
    histories = [imp["history"][-cfg.data.max_history :] for imp in impressions if imp["history"]]
    histories = list(islice(histories, cfg.export.parity_impressions))
    recall: dict[str, Any] = {"users": 0}
    if histories:
        trust = cfg.model.trust_remote_code
        backend = load_backend(export_dir, backend_name, cfg.serve.threads, trust)
        users = backend.users(*pad_histories(vectors, histories))
        recall = held_out_recall(indexes, vectors, users, cfg)
    log.info(
        "%s index recall against exact search, held-out users: %s", cfg.export.index.kind, recall
    )
    folder = index_dir(export_dir, backend_name)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    io.write_text(folder / META_FILE, json.dumps({**meta, "recall": recall}, indent=2) + "\n")
    parity = Path(export_dir) / PARITY_FILE
    if parity.is_file():
        report = json.loads(parity.read_text(encoding="utf-8"))
        report["index"] = {"kind": cfg.export.index.kind, "backend": backend_name, **recall}
        io.write_text(parity, json.dumps(report, indent=2))
    return recall
