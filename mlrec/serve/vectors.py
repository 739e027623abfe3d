"""Precomputed catalog vectors, so that `mlrec serve` need not embed a large catalog at every start.

  catalog/vectors.<backend>.npy    float32 [items, dim], rows in catalog/index.tsv order
  catalog/vectors.<backend>.json   what they were computed from

`mlrec export` writes them (export.catalog_vectors) with the backend `mlrec serve` runs, through
the code the service embeds with at start (Catalog.embed), so loading them gives the service the
vectors it would have computed itself. The JSON ties them to one export: backend, rows, dim, and
the sha256 of every file the vectors depend on (the catalog's token table and index, and the
backend's item encoder: its ONNX file, or for torch the weights, config.json and the model section
of mlrec_config.yaml). The service uses a file only when all of these match what it has loaded;
numbers alone say nothing about which model made them, and a silent mismatch ranks garbage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mlrec import io
from mlrec.config import Config, ConfigError, read_yaml
from mlrec.export.backends import Backend, load_backend, onnx_path
from mlrec.export.hf import CATALOG_DIR, CONFIG_FILE, HEADS_FILE
from mlrec.io import sha256
from mlrec.serve.catalog import Catalog

log = logging.getLogger(__name__)

FORMAT = 1  # of the JSON; a reader meeting another format re-embeds rather than guessing


class StaleVectors(ValueError):
    """A vectors file that does not belong to this export, catalog or backend."""


def vectors_path(export_dir: str | Path, backend: str) -> Path:
    """Where `mlrec export` writes, and `mlrec serve` looks for, a backend's catalog vectors."""
    return Path(export_dir) / CATALOG_DIR / f"vectors.{backend}.npy"


def _metadata_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _item_encoder_files(root: Path, backend: str) -> list[Path]:
    if backend == "torch":
        # model*.safetensors also covers sharded weights (model-00001-of-00002.safetensors ...)
        files = [root / "config.json", root / HEADS_FILE, *sorted(root.glob("model*.safetensors"))]
        index = root / "model.safetensors.index.json"
        return files + ([index] if index.is_file() else [])
    onnx = onnx_path(root, "item", "int8" if backend == "onnx-int8" else "fp32")
    # the ONNX file plus its external weights (item_encoder.onnx.data), if it was saved with any
    return sorted(onnx.parent.glob(onnx.name + "*"))


def sources(export_dir: str | Path, backend: str) -> dict[str, str]:
    """sha256 of everything a backend's catalog vectors depend on, by path in the export."""
    root = Path(export_dir)
    catalog = [root / CATALOG_DIR / "tokens.npy", root / CATALOG_DIR / "index.tsv"]
    files = catalog + _item_encoder_files(root, backend)
    out = {path.relative_to(root).as_posix(): sha256(path) for path in files}
    if backend == "torch":
        # pooling and projection_dim shape the vectors but live in the saved config, next to
        # settings (serve.*) that do not: only the model section counts
        saved = read_yaml((root / CONFIG_FILE).read_text(encoding="utf-8"))
        out[f"{CONFIG_FILE}:model"] = io.fingerprint(saved.get("model", {}))
    return out


def save_vectors(export_dir: str | Path, backend: str, vectors: np.ndarray) -> Path:
    """Write a catalog's vectors and the metadata that ties them to this export and backend."""
    path = vectors_path(export_dir, backend)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    metadata = {
        "format": FORMAT,
        "backend": backend,
        "rows": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "dtype": "float32",
        "sha256": sources(export_dir, backend),
    }
    # Old metadata goes first: it must never vouch for the new vectors, even after a crash.
    _metadata_path(path).unlink(missing_ok=True)
    io.save_npy(path, vectors)
    io.write_text(_metadata_path(path), json.dumps(metadata, indent=2) + "\n")
    return path


def load_vectors(path: Path, expected: dict) -> np.ndarray:
    """The vectors in `path` if its metadata matches `expected` (as save_vectors writes it);
    otherwise StaleVectors, saying what differs."""
    meta_path = _metadata_path(path)
    if not meta_path.is_file():
        raise StaleVectors(f"{meta_path.name} is missing, so nothing ties them to a model")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StaleVectors(f"{meta_path.name} is unreadable: {err}") from None
    for key in ("format", "backend", "rows", "dim"):
        if metadata.get(key) != expected[key]:
            raise StaleVectors(
                f"{key} is {metadata.get(key)!r} in {meta_path.name}; this service has "
                f"{expected[key]!r}"
            )
    theirs, ours = metadata.get("sha256", {}), expected["sha256"]
    changed = sorted(n for n in theirs.keys() | ours.keys() if theirs.get(n) != ours.get(n))
    if changed:
        raise StaleVectors(f"computed from another {', '.join(changed)} (sha256 differs)")
    try:
        vectors = np.load(path, allow_pickle=False)  # never pickle: a file could run code
    except (OSError, ValueError) as err:
        raise StaleVectors(f"unreadable: {err}") from None
    shape = (expected["rows"], expected["dim"])
    if vectors.dtype != np.float32 or vectors.shape != shape:
        raise StaleVectors(f"holds {vectors.dtype} {vectors.shape}; expected float32 {shape}")
    return vectors


def load_or_embed(
    catalog: Catalog, export_dir: str | Path, cfg: Config, backend: Backend, pad_id: int
) -> str:
    """Give `catalog` its vectors: the precomputed file when it matches, else embed them now.

    serve.catalog_vectors "" looks for catalog/vectors.<serve.backend>.npy and embeds when it is
    missing or stale; a path names a file the user wants, so a missing or stale one is an error
    rather than a silent slow start. Returns "loaded" or "embedded".
    """
    name = cfg.serve.backend
    explicit = cfg.serve.catalog_vectors
    path = Path(explicit) if explicit else vectors_path(export_dir, name)
    if path.is_file():
        expected = {
            "format": FORMAT,
            "backend": name,
            "rows": len(catalog),
            "dim": int(backend.dim),
            "sha256": sources(export_dir, name),
        }
        try:
            catalog.vectors = load_vectors(path, expected)
        except StaleVectors as err:
            if explicit:
                raise ConfigError(
                    f"serve.catalog_vectors: {path} does not belong to this export: {err}"
                ) from None
            log.warning(
                "not using %s: %s; embedding the catalog instead (`mlrec export` rewrites it)",
                path,
                err,
            )
        else:
            log.info("loaded precomputed vectors of %d catalog items (%s)", len(catalog), path)
            return "loaded"
    elif explicit:
        raise FileNotFoundError(f"serve.catalog_vectors: {path} not found")
    else:
        log.info(
            "no precomputed catalog vectors at %s: embedding the catalog (`mlrec export` "
            "writes them with export.catalog_vectors=true)",
            path,
        )
    catalog.embed(backend, pad_id, cfg.serve.batch_size)
    return "embedded"


def write_catalog_vectors(export_dir: str | Path, cfg: Config, backend_name: str) -> Path:
    """Embed an export's catalog with `backend_name` exactly as `mlrec serve` would at start
    (same backend, threads and batch size), and save the vectors into the export."""
    from mlrec.data.tokenizer import load_tokenizer

    trust = cfg.model.trust_remote_code  # the caller's opt-in, never the export's
    backend = load_backend(export_dir, backend_name, cfg.serve.threads, trust)
    tokenizer = load_tokenizer(export_dir, trust)
    catalog = Catalog(export_dir, cfg.data.default_language)
    catalog.embed(backend, tokenizer.pad_token_id, cfg.serve.batch_size)
    path = save_vectors(export_dir, backend_name, catalog.vectors)
    log.info("catalog vectors (%s backend) for `mlrec serve`: %s", backend_name, path)
    return path
