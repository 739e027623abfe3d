import math

import pytest

from mlrec.evaluation.metrics import auc, format_table, impression_metrics, mrr, ndcg, summarize


def test_auc_hand_computed():
    # positives score 0.9 and 0.4; negatives 0.5, 0.1: pairs won 3 of 4
    assert auc([1, 0, 1, 0], [0.9, 0.5, 0.4, 0.1]) == pytest.approx(0.75)
    assert auc([1, 0], [0.2, 0.2]) == pytest.approx(0.5)  # a tie counts half
    assert auc([0, 1, 0], [0.3, 0.1, 0.2]) == 0.0
    with pytest.raises(ValueError):
        auc([1, 1], [0.1, 0.2])


def test_mrr_hand_computed():
    # ranking: c(0) a(1) b(0) d(1): clicked at ranks 2 and 4 -> (1/2 + 1/4) / 2
    assert mrr([1, 0, 0, 1], [0.8, 0.5, 0.9, 0.1]) == pytest.approx(0.375)
    assert mrr([0, 1], [0.1, 0.9]) == pytest.approx(1.0)


def test_ndcg_hand_computed():
    labels, scores = [0, 1, 0, 1], [0.9, 0.8, 0.7, 0.1]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg(labels, scores, 10) == pytest.approx(dcg / ideal)
    # at k=2 only the click at rank 2 counts
    assert ndcg(labels, scores, 2) == pytest.approx((1 / math.log2(3)) / ideal)
    assert ndcg([1, 0], [0.9, 0.1], 5) == pytest.approx(1.0)


def test_impression_metrics_skips_unscorable():
    assert impression_metrics([1, 1], [0.1, 0.2]) is None
    assert impression_metrics([0, 0], [0.1, 0.2]) is None
    assert set(impression_metrics([1, 0], [0.1, 0.2])) == {"auc", "mrr", "ndcg@5", "ndcg@10"}


def test_summarize_means_per_language_and_overall():
    a = impression_metrics([1, 0], [0.9, 0.1])  # perfect
    b = impression_metrics([1, 0], [0.1, 0.9])  # inverted
    out = summarize([("en", a), ("en", b), ("de", a)])
    assert out["by_language"]["en"]["auc"] == pytest.approx(0.5)
    assert out["by_language"]["de"]["auc"] == pytest.approx(1.0)
    assert out["overall"]["auc"] == pytest.approx(2 / 3)
    assert out["overall"]["impressions"] == 3
    assert out["by_language"]["en"]["impressions"] == 2
    table = format_table(out)
    assert "overall" in table and "de" in table
    with pytest.raises(ValueError):
        summarize([])
