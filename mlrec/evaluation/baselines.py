"""Baselines that every evaluation shows beside the trained model, scored on the same impressions.

- `Popularity`: each candidate's click count in the training split, per news id. The count ignores
  language: N123@de and N123@en are one news story, and that is what a cross-lingual user would
  expect. Only clicked training candidates (labels) count; histories do not, because they come
  from before the training window and would count the same old clicks again for every impression
  of a user.
- `LateFusion`: a frozen multilingual encoder's item vectors. The user is the mean of the history
  items' vectors, and the score is a dot product. It needs no training, so a trained model that
  cannot beat it has learnt nothing cross-lingual. The vectors come from `item_texts` (the text
  of every item-table row, checked against the table) and `frozen_item_vectors` (any `encode`
  callable, L2-normalised and cached). The encoder is passed in as a callable: mlrec.evaluation
  may not import mlrec.distill, where the mUSE teacher lives.

- `CentredHead`: the same vectors with each language's mean removed (`centre_by_language`, in
  mlrec.data.features), and a linear map trained on the training clicks (the strong simple
  baseline for cross-lingual transfer).

`score_impressions` turns any scorer's scores into per-impression metrics, so baselines and the
model share one path from scores to numbers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlrec import io
from mlrec.data.items import Categories, kept_items
from mlrec.data.layout import ITEMS_RECORD, item_index, item_keys, shard_files
from mlrec.data.loader import read_impressions
from mlrec.data.rows import RowLog
from mlrec.evaluation.metrics import impression_metrics

log = logging.getLogger(__name__)

Impression = dict[str, Any]  # a shard sample, as mlrec.data.loader.read_impressions yields it
Scorer = Callable[[Impression], Sequence[float]]  # candidate scores of one impression

_RESHARD = "re-shard with `mlrec shard --config ...` so the item table matches the news files"


class Popularity:
    """Candidates scored by their news id's click count in the training split."""

    name = "popularity"

    def __init__(self, clicks: dict[str, int], row_news: list[str], impressions: int = 0) -> None:
        self.clicks = dict(clicks)  # news id -> training clicks (ids never clicked are absent)
        self.row_news = row_news  # item-table row -> news id
        self.impressions = impressions  # training impressions counted
        self.total_clicks = sum(self.clicks.values())

    @classmethod
    def from_shards(cls, shards_dir: str | Path) -> Popularity:
        """Count the clicked candidates of every impression in the train shards."""
        row_news = [nid for (nid, _), _ in item_keys(shards_dir)]
        clicks: Counter[str] = Counter()
        impressions = 0
        for imp in read_impressions(shard_files(shards_dir, "train")):
            impressions += 1
            clicks.update(
                row_news[r] for r, y in zip(imp["candidates"], imp["labels"], strict=True) if y
            )
        log.info(
            "popularity: %d clicks on %d news ids in %d training impressions",
            sum(clicks.values()),
            len(clicks),
            impressions,
        )
        return cls(clicks, row_news, impressions)

    def scores(self, impression: Impression) -> list[float]:
        """Each candidate's training clicks; 0 when never clicked. Equal counts stay tied (no
        tie-break): AUC counts a tie half."""
        return [float(self.clicks.get(self.row_news[r], 0)) for r in impression["candidates"]]


class LateFusion:
    """Frozen item vectors: user = mean of the last `max_history` history vectors (as the
    trained model sees them); score = dot product with each candidate's vector.

    An impression with an empty history scores every candidate 0, so all candidates tie (AUC 0.5):
    with no clicks there is nothing to say about the user.
    """

    def __init__(self, vectors: np.ndarray, max_history: int, name: str = "late fusion") -> None:
        if vectors.ndim != 2:
            raise ValueError(f"item vectors must be [items, dim]; got shape {vectors.shape}")
        if max_history < 1:
            raise ValueError(f"max_history must be at least 1; got {max_history}")
        self.vectors = vectors  # row-aligned with the item table
        self.max_history = max_history
        self.name = name

    def scores(self, impression: Impression) -> list[float]:
        candidates = impression["candidates"]
        history = impression["history"][-self.max_history :]
        if not history:
            return [0.0] * len(candidates)
        # float64: float32 dot products of near-equal items tie more often than they should
        user = self.vectors[history].astype(np.float64).mean(axis=0)
        return (self.vectors[candidates].astype(np.float64) @ user).tolist()


class CentredHead(LateFusion):
    """The strong simple baseline: frozen teacher vectors, centred per language, and a linear
    map W learnt on the training clicks, user = mean of the history, score = (W user) . c.

    W starts at the identity (centred late fusion) and is trained by softmax cross-entropy of
    each clicked candidate against its impression's unclicked ones, with an L2 pull towards the
    identity; the epoch with the lowest loss on held-out training impressions (every 10th, by
    impression id) is kept, so the head stops before it learns the training baskets by heart.
    """

    def __init__(self, vectors: np.ndarray, max_history: int, head: np.ndarray) -> None:
        super().__init__(vectors, max_history, name="teacher centred head")
        self.head = head  # [dim, dim]

    def scores(self, impression: Impression) -> list[float]:
        history = impression["history"][-self.max_history :]
        if not history:
            return [0.0] * len(impression["candidates"])
        user = self.head.astype(np.float64) @ self.vectors[history].astype(np.float64).mean(0)
        return (self.vectors[impression["candidates"]].astype(np.float64) @ user).tolist()

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        train: Sequence[Impression],
        max_history: int,
        *,
        epochs: int = 30,
        lr: float = 1e-3,
        pull: float = 1e-2,
        seed: int = 0,
    ) -> CentredHead:
        import torch

        generator = torch.Generator().manual_seed(seed)
        fit_on = [imp for imp in train if imp["impression"] % 10 and _trainable(imp)]
        held = [imp for imp in train if not imp["impression"] % 10 and _trainable(imp)]
        table = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
        dim = table.shape[1]
        head = torch.nn.Parameter(torch.eye(dim))
        optimizer = torch.optim.Adam([head], lr=lr)
        with torch.no_grad():
            best, best_loss = head.detach().clone(), _head_loss(head, held, table, max_history)
        start_loss, best_epoch = float(best_loss), 0
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(fit_on), generator=generator).tolist()
            for start in range(0, len(order), 64):
                batch = [fit_on[i] for i in order[start : start + 64]]
                loss = _head_loss(head, batch, table, max_history)
                loss = loss + pull * (head - torch.eye(dim)).pow(2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                held_loss = _head_loss(head, held, table, max_history)
            if held_loss < best_loss:
                best, best_loss, best_epoch = head.detach().clone(), held_loss, epoch
        # epoch 0 kept means the clicks taught the head nothing: it is centred late fusion
        log.info(
            "teacher centred head: %d training impressions (%d held out), held-out loss %.4f "
            "at the identity, %.4f after epoch %d of %d (kept)",
            len(fit_on),
            len(held),
            start_loss,
            float(best_loss),
            best_epoch,
            epochs,
        )
        return cls(vectors, max_history, best.numpy())


def _trainable(imp: Impression) -> bool:
    labels = imp["labels"]
    return bool(imp["history"]) and any(labels) and not all(labels)


def _head_loss(head, impressions: Sequence[Impression], table, max_history: int):
    """Mean softmax cross-entropy of each click against its impression's unclicked candidates."""
    import torch

    losses = []
    for imp in impressions:
        user = head @ table[imp["history"][-max_history:]].mean(0)
        scores = table[imp["candidates"]] @ user
        labels = torch.tensor(imp["labels"], dtype=torch.bool)
        negatives = scores[~labels]
        for positive in scores[labels]:
            logits = torch.cat([positive.view(1), negatives])
            losses.append(torch.logsumexp(logits, 0) - positive)
    if not losses:
        return torch.tensor(float("inf"))
    return torch.stack(losses).mean()


def _sources(files: dict[str, list[Path]]) -> dict[str, list[tuple[int, str]]]:
    """Language -> (bytes, sha256) of its news files in order: their content, not their paths,
    so a corpus that was copied elsewhere still matches."""
    return {
        lang: [(r["bytes"], r["sha256"]) for r in map(io.file_record, map(Path, paths))]
        for lang, paths in sorted(files.items())
    }


def item_texts(
    shards_dir: str | Path, files: dict[str, list[Path]], text_fields: list[str], on_error: str
) -> list[str]:
    """The text of every item-table row, in row order, read from the news files with the
    reader the table was built with (`kept_items`, under the same `data.on_error` policy).

    Raises ValueError when the files no longer give the table's items: a different key at some
    row, a different number of rows, or (for a table whose items.json names its news files) files
    whose content changed since sharding, which could alter texts under unchanged keys.
    """
    index = item_index(shards_dir)
    texts: list[str] = []
    rows = RowLog(on_error, warn=False)  # the sharding run reported the rejected rows
    for row, item in enumerate(kept_items(files, Categories(files), rows)):
        key = f"{item.nid}@{item.lang}"
        if row >= len(index) or index[row][0] != key:
            table = index[row][0] if row < len(index) else "nothing (the table ends)"
            raise ValueError(
                f"{shards_dir}: item-table row {row} is {table}, but the news files now give "
                f"{key} there: the news files changed since sharding; {_RESHARD}"
            )
        texts.append(item.text(text_fields))
    if len(texts) != len(index):
        raise ValueError(
            f"{shards_dir}: the item table has {len(index)} rows, but the news files now give "
            f"{len(texts)} items: the news files changed since sharding; {_RESHARD}"
        )
    # items.json is the table's completion mark, so a finished table always has one
    recorded = json.loads((Path(shards_dir) / ITEMS_RECORD).read_text()).get("news_files")
    if recorded is not None:
        then = {lang: [(r["bytes"], r["sha256"]) for r in rs] for lang, rs in recorded.items()}
        if then != _sources(files):
            raise ValueError(
                f"{shards_dir}: the news files differ from those the item table was built from "
                f"({ITEMS_RECORD}: news_files): texts may have changed under the same ids; "
                f"{_RESHARD}"
            )
    return texts


def frozen_item_vectors(
    texts: list[str],
    encode: Callable[[list[str]], np.ndarray],
    cache_dir: str | Path,
    name: str,
) -> np.ndarray:
    """float32 [len(texts), dim] vectors of `texts` from `encode` (called once, on all of them),
    each L2-normalised (an all-zero vector stays zero). Cached in `cache_dir` as
    `items-<key>.npy` + `.json`, the key naming the encoder (`name`, which must change whenever
    the encoder's weights do) and the texts' digest; a later call with both the same reads them
    back without calling `encode`."""
    digest = io.texts_digest(texts)
    # tagged: cached_embeddings (mlrec.distill) keys un-normalised teacher vectors by the same
    # (name, digest), and the two may share a cache folder
    key = io.fingerprint(["baseline item vectors", name, digest])[:24]
    cache = Path(cache_dir)
    vectors_file, record_file = cache / f"items-{key}.npy", cache / f"items-{key}.json"
    if vectors_file.is_file() and record_file.is_file():
        record = json.loads(record_file.read_text())
        if record["encoder"] == name and record["texts_sha256"] == digest:
            log.info("item vectors of %d texts read from %s", len(texts), vectors_file)
            return np.load(vectors_file)
    log.info("encoding %d item texts with %s", len(texts), name)
    vectors = np.asarray(encode(texts), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(
            f"{name}: encode gave an array of shape {vectors.shape} for {len(texts)} texts; "
            "expected [texts, dim]"
        )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.maximum(norms, np.finfo(np.float32).tiny)
    cache.mkdir(parents=True, exist_ok=True)
    io.save_npy(vectors_file, vectors)
    # the record last: it marks the entry complete
    record = {"encoder": name, "dim": int(vectors.shape[1]), "count": len(texts)}
    io.write_json(record_file, {**record, "texts_sha256": digest, "normalised": True}, indent=2)
    return vectors


def score_impressions(
    impressions: Iterable[Impression], scorer: Scorer
) -> list[tuple[int, str, dict[str, float] | None]]:
    """(impression id, language, impression_metrics or None when unscorable) for each impression,
    in order; `scorer` is e.g. `Popularity.scores` or `LateFusion.scores`."""
    out = []
    for imp in impressions:
        scores = list(scorer(imp))
        if len(scores) != len(imp["candidates"]):
            raise ValueError(
                f"impression {imp['impression']}: {len(scores)} scores for "
                f"{len(imp['candidates'])} candidates"
            )
        out.append((imp["impression"], imp["lang"], impression_metrics(imp["labels"], scores)))
    return out
