"""Item features: a frozen teacher's vector of every item-table row, cached beside the tokens.

`items/features.npy` (float16 [items, dim]) holds, for each row of the item table, the vector a
frozen multilingual encoder (the teacher) gives the row's text, L2-normalised, then:
- centred per language (`centre: true`): each language's mean vector over its rows subtracted
  and the result normalised again. Multilingual encoders put each language at an offset of its
  own (Libovický et al., 2020), which no click in another language can teach a model to remove;
  removing it needs no labels;
- mapped per language onto one language's space (`map: procrustes | linear`, `map_to: en`): for
  each other language L, a map from L's vectors to `map_to`'s learnt on the catalog's own
  parallel rows (the same news id in L and in `map_to`), leaving out every news id a dev
  impression shows (the dev items' translations are the evaluation, not training data).
  `procrustes` is the orthogonal map closest in least squares (Schönemann, 1966: it keeps
  distances, so it cannot collapse the space onto what the pairs cover); `linear` the ridge
  least-squares one. A language with fewer than `min_pairs` pairs keeps its vectors, and the
  record says so.

`items/features.json` records the teacher, the options, the digest of the texts and, per
language, the pairs each map was fit on and its mean cosine to the target on held-out pairs
(every 10th by news id, fit without them) before and after the map.

The model's teacher-feature item tower (mlrec.models.recommender, `model.item_tower`) reads the
table through `load_features`, which refuses one made by another teacher or with other options.
The teacher itself is passed in as a callable, as mlrec.data may not import mlrec.distill.
"""

from __future__ import annotations

import hashlib
import io as io_bytes
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlrec import io
from mlrec.config import ItemFeaturesConfig
from mlrec.data.layout import FEATURES_RECORD, FEATURES_TRANSFORM, ITEM_FEATURES, item_index
from mlrec.data.rows import DataError
from mlrec.languages import parse_ref

log = logging.getLogger(__name__)

_TINY = np.finfo(np.float32).tiny


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, _TINY)


def language_means(
    vectors: np.ndarray, languages: Sequence[str], rows: Sequence[int]
) -> dict[str, np.ndarray]:
    """Each language's mean vector over `rows` (the rows encoded)."""
    rows = np.asarray(rows, dtype=np.int64)
    langs = np.asarray(languages)[rows]
    return {lang: vectors[rows[langs == lang]].mean(axis=0) for lang in sorted(set(langs.tolist()))}


def centre_by_language(
    vectors: np.ndarray, languages: Sequence[str], rows: Sequence[int]
) -> np.ndarray:
    """`vectors` with each language's mean vector (over `rows`, the rows encoded) subtracted
    from that language's rows, then L2-normalised again. Rows outside `rows` stay zero."""
    out = np.zeros_like(vectors)
    rows = np.asarray(rows, dtype=np.int64)
    langs = np.asarray(languages)[rows]
    for lang, mean in language_means(vectors, languages, rows).items():
        mine = rows[langs == lang]
        out[mine] = _normalised(vectors[mine] - mean)
    return out


@dataclass
class FeatureTransform:
    """What turns a teacher vector of a text in language L into its feature row: L's mean
    (centre) and L's map onto `map_to`, as fit on the item table. Kept beside the table
    (items/features-transform.npz) so texts the table does not hold (an item added later, a
    retrieval pool) get features made the same way."""

    means: dict[str, np.ndarray]  # language -> mean of its raw rows ({} without centre)
    maps: dict[str, np.ndarray]  # language -> [dim, dim] map (languages without one: absent)
    centre: bool

    def __call__(self, raw: np.ndarray, lang: str) -> np.ndarray:
        """Feature rows of teacher vectors `raw` [n, dim] of texts in `lang`."""
        out = _normalised(np.asarray(raw, dtype=np.float32))
        if self.centre:
            if lang not in self.means:
                raise DataError(
                    f"item features: no centre for language {lang!r}: the item table the "
                    f"features were made on has {', '.join(sorted(self.means))}"
                )
            out = _normalised(out - self.means[lang])
        if lang in self.maps:
            out = _normalised(out.astype(np.float64) @ self.maps[lang]).astype(np.float32)
        return out

    def save(self, path: Path) -> None:
        arrays = {f"mean_{k}": v for k, v in self.means.items()}
        arrays |= {f"map_{k}": v for k, v in self.maps.items()}
        buffer = io_bytes.BytesIO()
        np.savez(buffer, **arrays)
        io.write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, shards_dir: str | Path, spec: ItemFeaturesConfig) -> FeatureTransform:
        """The transform of the features `spec` asks for (refused as `load_features` is)."""
        load_features(shards_dir, spec)
        path = Path(shards_dir) / FEATURES_TRANSFORM
        if not path.is_file():
            raise DataError(
                f"{path}: missing (features written before mlrec kept their transform); "
                "write them again with `mlrec shard --config ...`"
            )
        with np.load(path, allow_pickle=False) as z:
            means = {k[5:]: z[k] for k in z.files if k.startswith("mean_")}
            maps = {k[4:]: z[k] for k in z.files if k.startswith("map_")}
        return cls(means, maps, spec.centre)


def fit_map(source: np.ndarray, target: np.ndarray, kind: str, ridge: float = 1.0) -> np.ndarray:
    """The [dim, dim] matrix W with source @ W close to target (rows are pairs): orthogonal
    (`procrustes`), or least squares pulled towards the identity (`linear`: minimises
    |XW - Y|^2 + ridge |W - I|^2, so with few pairs it stays close to no map at all)."""
    x, y = source.astype(np.float64), target.astype(np.float64)
    if kind == "procrustes":
        u, _, vt = np.linalg.svd(x.T @ y)
        return u @ vt
    if kind == "linear":
        eye = np.eye(x.shape[1])
        return np.linalg.solve(x.T @ x + ridge * eye, x.T @ y + ridge * eye)
    raise ValueError(f"unknown map kind {kind!r}")


# the pulls tried for `linear`, the best on held-out pairs kept (1 or 3 for most languages of
# the Debian catalog; the larger ones are for languages with few pairs)
RIDGES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def _mean_cosine(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.sum(_normalised(x) * _normalised(y), axis=1)))


def _held_out(nid: str) -> bool:
    """Every 10th news id (by hash, so stable across runs), for checking a map on pairs it
    was not fit on."""
    return int(hashlib.sha1(nid.encode()).hexdigest()[:8], 16) % 10 == 0


def language_maps(
    vectors: np.ndarray,
    keys: Sequence[tuple[str, str]],
    spec: ItemFeaturesConfig,
    excluded: set[str],
    extra: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per language L != spec.map_to: the map of L's rows onto map_to's, fit on the news ids
    both have (minus `excluded`) and on `extra[L]` (more (L, map_to) vector pairs, already
    centred); and what each map was fit on and how well it does."""
    extra = extra or {}
    by_lang: dict[str, dict[str, int]] = {}
    for row, (nid, lang) in enumerate(keys):
        by_lang.setdefault(lang, {})[nid] = row
    target = by_lang.get(spec.map_to, {})
    maps, report = {}, {}
    for lang in sorted(by_lang):
        if lang == spec.map_to:
            continue
        shared = sorted(n for n in by_lang[lang] if n in target and n not in excluded)
        fit_on = [n for n in shared if not _held_out(n)]
        check = [n for n in shared if _held_out(n)]
        more_x, more_y = extra.get(lang, (np.zeros((0, vectors.shape[1])),) * 2)
        entry: dict[str, Any] = {"pairs": len(fit_on), "held_out_pairs": len(check)}
        if lang in extra:
            entry["extra_pairs"] = len(more_x)
        if len(fit_on) + len(more_x) < spec.min_pairs:
            entry["map"] = f"none (fewer than {spec.min_pairs} pairs)"
            report[lang] = entry
            continue
        src = np.vstack([vectors[[by_lang[lang][n] for n in fit_on]], more_x]).astype(np.float64)
        dst = np.vstack([vectors[[target[n] for n in fit_on]], more_y]).astype(np.float64)
        x = vectors[[by_lang[lang][n] for n in check]].astype(np.float64)
        y = vectors[[target[n] for n in check]].astype(np.float64)
        if spec.map == "linear" and check:
            # the pull towards the identity that does best on the held-out pairs
            fits = {r: fit_map(src, dst, "linear", r) for r in RIDGES}
            ridge = max(fits, key=lambda r: _mean_cosine(x @ fits[r], y))
            w, entry["ridge"] = fits[ridge], ridge
        else:
            w = fit_map(src, dst, spec.map, RIDGES[-1])
        maps[lang] = w
        entry["map"] = spec.map
        if check:
            entry["held_out_cosine_before"] = _mean_cosine(x, y)
            entry["held_out_cosine_after"] = _mean_cosine(x @ w, y)
        report[lang] = entry
    return maps, report


def build_features(
    shards_dir: str | Path,
    texts: list[str],
    encode: Callable[[list[str]], np.ndarray],
    spec: ItemFeaturesConfig,
    excluded: set[str],
    teacher: str,
    extra: dict[str, list[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """Encode every row's text, centre and map as `spec` says, write items/features.npy and its
    record (see the module docstring); returns the record. `excluded`: the news ids no map may
    be fit on (those of the dev impressions); `extra`: language L -> more (L text, map_to text)
    pairs for L's map (data.item_features.map_sources)."""
    index = item_index(shards_dir)
    if len(texts) != len(index):
        raise ValueError(f"{len(texts)} texts for an item table of {len(index)} rows")
    keys = [parse_ref(key, "") for key, *_ in index]
    log.info("item features: encoding %d item texts with %s", len(texts), teacher)
    encoded = np.asarray(encode(texts), dtype=np.float32)
    raw = _normalised(encoded)
    languages = [lang for _, lang in keys]
    means = language_means(raw, languages, range(len(raw))) if spec.centre else {}
    transform = FeatureTransform(means, {}, spec.centre)
    langs = np.asarray(languages)
    vectors = raw.copy()
    for lang in means:
        mine = np.flatnonzero(langs == lang)
        vectors[mine] = transform(encoded[mine], lang)
    report: dict[str, Any] = {}
    if spec.map != "none":
        more = _extra_vectors(extra or {}, encode, transform, spec.map_to)
        transform.maps, report = language_maps(vectors, keys, spec, excluded, more)
        for lang in transform.maps:
            mine = np.flatnonzero(langs == lang)
            vectors[mine] = transform(encoded[mine], lang)
    record = {
        **_identity(spec, texts),
        "teacher_model": teacher,
        "rows": len(texts),
        "dim": int(vectors.shape[1]),
        "excluded_news_ids": len(excluded),
        "maps": report,
    }
    if spec.map_to:
        record["retrieval"] = held_out_retrieval(raw, vectors, keys, excluded, spec.map_to)
    path = Path(shards_dir) / ITEM_FEATURES
    path.parent.mkdir(parents=True, exist_ok=True)
    io.save_npy(path, vectors.astype(np.float16))
    transform.save(Path(shards_dir) / FEATURES_TRANSFORM)
    io.write_json(Path(shards_dir) / FEATURES_RECORD, record, indent=2)  # last: marks it done
    for lang, entry in report.items():
        log.info("item features: %s -> %s %s", lang, spec.map_to, entry)
    return record


def _extra_vectors(
    extra: dict[str, list[tuple[str, str]]],
    encode: Callable[[list[str]], np.ndarray],
    centre: FeatureTransform,
    target: str,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The centred teacher vectors of the extra pairs of each language the table has (one
    encode call for all their texts)."""
    extra = {lang: pairs for lang, pairs in extra.items() if lang in centre.means and pairs}
    texts = sorted({text for pairs in extra.values() for pair in pairs for text in pair})
    if not texts:
        return {}
    row = {text: i for i, text in enumerate(texts)}
    raw = np.asarray(encode(texts), dtype=np.float32)
    return {
        lang: (
            centre(raw[[row[x] for x, _ in pairs]], lang),
            centre(raw[[row[y] for _, y in pairs]], target),
        )
        for lang, pairs in sorted(extra.items())
    }


def held_out_retrieval(
    raw: np.ndarray,
    final: np.ndarray,
    keys: Sequence[tuple[str, str]],
    pool: set[str],
    target: str,
) -> dict[str, dict[str, Any]]:
    """Translation retrieval on the items no map saw (`pool`: the dev impressions' news ids):
    per language L, the share of L's pool items whose nearest `target` item of the pool is
    their own translation, with the teacher's raw vectors and with the final features."""
    rows: dict[str, dict[str, int]] = {}
    for row, (nid, lang) in enumerate(keys):
        if nid in pool:
            rows.setdefault(lang, {})[nid] = row
    dst_rows = rows.get(target, {})
    out: dict[str, dict[str, Any]] = {}
    for lang in sorted(rows):
        shared = sorted(n for n in rows[lang] if n in dst_rows) if lang != target else []
        if not shared:
            continue
        src = [rows[lang][n] for n in shared]
        dst = [dst_rows[n] for n in shared]
        out[lang] = {
            "pool": len(shared),
            "teacher_top1": _top1(raw[src], raw[dst]),
            "features_top1": _top1(final[src], final[dst]),
        }
    return out


def _top1(src: np.ndarray, dst: np.ndarray) -> float:
    """Share of rows i whose most similar row of `dst` is row i."""
    best = np.argmax(src.astype(np.float32) @ dst.astype(np.float32).T, axis=1)
    return float(np.mean(best == np.arange(len(src))))


def _identity(spec: ItemFeaturesConfig, texts: list[str] | None) -> dict[str, Any]:
    out = {"teacher": spec.teacher, "centre": spec.centre, "map": spec.map, "map_to": spec.map_to}
    if spec.map != "none":
        out["min_pairs"] = spec.min_pairs
    if spec.map_sources:
        out["map_sources"], out["map_heldout"] = list(spec.map_sources), spec.map_heldout
    if spec.map == "linear":
        out["ridges"] = list(RIDGES)
    if texts is not None:
        out["texts_sha256"] = io.texts_digest(texts)
    return out


def features_current(shards_dir: str | Path, spec: ItemFeaturesConfig) -> bool:
    """Whether the shards hold features made by `spec`'s teacher with its options."""
    record = Path(shards_dir) / FEATURES_RECORD
    needed = (record, Path(shards_dir) / ITEM_FEATURES, Path(shards_dir) / FEATURES_TRANSFORM)
    if not all(path.is_file() for path in needed):
        return False
    made = json.loads(record.read_text())
    return all(made.get(k) == v for k, v in _identity(spec, None).items())


def load_features(shards_dir: str | Path, spec: ItemFeaturesConfig) -> np.ndarray:
    """items/features.npy, memory-mapped, once it is known to be the one `spec` asks for and to
    have a row for every item; a DataError naming what differs otherwise."""
    path = Path(shards_dir) / ITEM_FEATURES
    if not features_current(shards_dir, spec):
        raise DataError(
            f"{path}: no item features made with data.item_features {_identity(spec, None)}; "
            "write them with `mlrec shard --config ...`"
        )
    table = np.load(path, mmap_mode="r")
    rows = len(item_index(shards_dir))
    if table.ndim != 2 or len(table) != rows:
        raise DataError(f"{path}: shape {table.shape}, but the item table has {rows} rows")
    return table


def tower_features(tower: str, spec: ItemFeaturesConfig, shards_dir: str | Path):
    """The feature table a model with item tower `tower` (model.item_tower) reads from these
    shards: None for the text tower, else `load_features`."""
    return None if tower == "text" else load_features(shards_dir, spec)
