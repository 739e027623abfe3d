"""xMIND's transfer protocol as a corpus rewrite: ZS-XLT, FS-XLT and bilingual histories."""

import json
from collections import Counter

import pytest

from mlrec.data.corpus import prepare_corpus
from mlrec.data.mind import read_behaviors
from mlrec.data.xling import rewrite_corpus, transfer_gaps
from tests.conftest import tiny_config


def _langs(path):
    history, candidates = Counter(), Counter()
    for _, imp in read_behaviors(path, "en"):
        history.update(lang for _, lang in imp.history)
        candidates.update(lang for _, lang in imp.candidates)
    return history, candidates


def test_zero_shot_rewrite(tmp_path):
    cfg = tiny_config(tmp_path, "xling.target_languages=[de, zh]")
    prepare_corpus(cfg.data, cfg.corpus_dir)
    out = rewrite_corpus(cfg.xling, cfg.data, cfg.corpus_dir, cfg.run_dir)
    history, candidates = _langs(out / "train" / "behaviors.tsv")
    assert set(history) == set(candidates) == {"en"}  # trained on the source language only
    dev = list(read_behaviors(out / "dev" / "behaviors.tsv", "en"))
    original = list(read_behaviors(cfg.corpus_dir / "dev" / "behaviors.tsv", "en"))
    assert len(dev) == 3 * len(original)
    assert len({imp.impression_id for _, imp in dev}) == len(dev)
    assert Counter(imp.lang for _, imp in dev) == dict.fromkeys(["en", "de", "zh"], len(original))
    # the same impression in each language: same news ids and labels
    n = len(original)
    for k in (0, n - 1):
        copies = [dev[k][1], dev[n + k][1], dev[2 * n + k][1]]
        assert len({tuple(nid for nid, _ in c.candidates) for c in copies}) == 1
        assert len({tuple(c.labels) for c in copies}) == 1
    assert {lang for _, imp in dev[n : 2 * n] for _, lang in imp.history} == {"de"}
    record = json.loads((out / "xling.json").read_text())
    assert record["target_languages"] == ["de", "zh"] and record["impressions"]["train"] > 0


def test_few_shot_and_bilingual(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "xling.target_languages=[de]",
        "xling.few_shot_fraction=0.2",
        "xling.history_target_fraction=0.5",
    )
    out = rewrite_corpus(cfg.xling, cfg.data, cfg.corpus_dir, cfg.run_dir)
    history, candidates = _langs(out / "train" / "behaviors.tsv")
    share = candidates["de"] / sum(candidates.values())
    assert 0.1 < share < 0.3 and set(candidates) == {"en", "de"}
    dev = list(read_behaviors(out / "dev" / "behaviors.tsv", "en"))
    german = [imp for _, imp in dev if imp.lang == "de"]
    mixed = Counter(lang for imp in german for _, lang in imp.history)
    assert 0.35 < mixed["de"] / sum(mixed.values()) < 0.65
    assert all(lang == "de" for imp in german for _, lang in imp.candidates)


def test_transfer_gaps():
    metrics = {"by_language": {"en": {"auc": 0.8}, "de": {"auc": 0.7}, "zh": {"auc": 0.6}}}
    assert transfer_gaps(metrics, "en") == pytest.approx({"de": -0.1, "zh": -0.2})
