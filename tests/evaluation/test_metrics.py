import math

import pytest

from mlrec.evaluation.metrics import (
    auc,
    format_table,
    impression_metrics,
    mrr,
    ndcg,
    summarize,
    unscored_reason,
)


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
    assert unscored_reason([0, 0]) == "no click"
    assert unscored_reason([1, 1]) == "all clicked"
    assert unscored_reason([0, 1]) is None


def test_summarize_means_per_language_and_overall():
    a = impression_metrics([1, 0], [0.9, 0.1])  # perfect
    b = impression_metrics([1, 0], [0.1, 0.9])  # inverted
    out = summarize([("en", a), ("en", b), ("de", a)])
    assert out["by_language"]["en"]["auc"] == pytest.approx(0.5)
    assert out["by_language"]["de"]["auc"] == pytest.approx(1.0)
    assert out["overall"]["auc"] == pytest.approx(2 / 3)
    assert out["overall"]["impressions"] == 3
    assert out["by_language"]["en"]["impressions"] == 2
    assert (out["overall"]["read"], out["overall"]["scored"]) == (3, 3)
    assert out["overall"]["unscored"] == {"no click": 0, "all clicked": 0}
    table = format_table(out)
    assert "overall" in table and "de" in table
    with pytest.raises(ValueError):
        summarize([])


def test_summarize_accounts_for_every_impression():
    a = impression_metrics([1, 0], [0.9, 0.1])
    unscored = [("en", "no click"), ("en", "all clicked"), ("ja", "no click"), ("ja", "no click")]
    out = summarize([("en", a), ("de", a)], unscored)
    en, ja = out["by_language"]["en"], out["by_language"]["ja"]
    assert (en["read"], en["scored"], en["impressions"]) == (3, 1, 1)
    assert en["unscored"] == {"no click": 1, "all clicked": 1}
    assert en["auc"] == 1.0  # the mean over the scored impression alone
    # every impression of ja is unscorable: the row is there, with counts and no metrics
    assert ja == {
        "impressions": 0,
        "read": 2,
        "scored": 0,
        "unscored": {"no click": 2, "all clicked": 0},
    }
    overall = out["overall"]
    assert (overall["read"], overall["scored"]) == (6, 2)
    assert overall["unscored"] == {"no click": 3, "all clicked": 1}
    for row in [*out["by_language"].values(), overall]:
        assert row["read"] == row["scored"] + sum(row["unscored"].values())
    table = format_table(out)
    ja_line = next(line for line in table.splitlines() if line.startswith("ja"))
    assert ja_line.split() == ["ja", "2", "0", "-", "-", "-", "-"]
    with pytest.raises(ValueError, match="no click"):
        summarize([], [("en", "no click")])  # nothing to average: loud, with the counts
    with pytest.raises(ValueError, match="unknown reason"):
        summarize([("en", a)], [("en", "bored")])


def test_format_table_reads_older_metrics_files():
    row = {"auc": 0.6, "mrr": 0.3, "ndcg@5": 0.35, "ndcg@10": 0.4, "impressions": 10}
    table = format_table({"overall": row, "by_language": {"en": row}})
    assert table.splitlines()[-1].split() == [
        "overall",
        "10",
        "10",
        "0.6000",
        "0.3000",
        "0.3500",
        "0.4000",
    ]


def test_paired_differences_against_the_teacher_per_language():
    from mlrec.evaluation.ranking import paired_against

    def rows(aucs):  # (impression, language, candidates, scores, outcome) as outcomes() gives
        return [
            (i, lang, [], None, {"auc": auc} if auc is not None else "no click")
            for i, (lang, auc) in enumerate(aucs)
        ]

    teacher = rows([("de", 0.5), ("de", 0.7), ("de", 0.6), ("fr", 0.9), ("fr", None)])
    model = rows([("de", 0.6), ("de", 0.9), ("de", 0.6), ("fr", 0.8), ("fr", None)])
    got = paired_against({"teacher_late_fusion": teacher, "model": model}, "teacher_late_fusion")
    assert got["against"] == "teacher_late_fusion" and "teacher_late_fusion" not in got
    de = got["model"]["de"]
    assert de["n"] == 3 and abs(de["diff"] - 0.1) < 1e-12
    # sd of (0.1, 0.2, 0.0) is 0.1: se = 0.1 / sqrt(3)
    assert abs(de["se"] - 0.1 / 3**0.5) < 1e-12
    assert got["model"]["fr"]["n"] == 1  # the unscored impression is in neither
    assert got["model"]["overall"]["n"] == 4
    with pytest.raises(ValueError, match="different impressions"):
        paired_against({"teacher_late_fusion": teacher, "model": model[1:] + model[:1]},
                       "teacher_late_fusion")  # fmt: skip


def test_the_paired_error_by_user_counts_a_users_impressions_as_one():
    from mlrec.evaluation.ranking import paired_against

    # two users, each with two identical differences: four impressions, but two independent
    # observations; the error by user must be that of two values, not of four
    teacher = [(i, "de", [], None, {"auc": 0.5}) for i in range(4)]
    model = [(i, "de", [], None, {"auc": 0.5 + d}) for i, d in enumerate([0.1, 0.1, 0.3, 0.3])]
    users = {0: "a", 1: "a", 2: "b", 3: "b"}
    got = paired_against({"teacher_late_fusion": teacher, "model": model}, "teacher_late_fusion",
                         users=users)["model"]["de"]  # fmt: skip
    assert got["users"] == 2 and abs(got["diff"] - 0.2) < 1e-12
    # residuals per user sum to -0.2 and +0.2; CR1: sqrt((0.04 + 0.04) * 2 / 1) / 4 = 0.1
    assert abs(got["se_by_user"] - 0.1) < 1e-12
    # the plain error treats the four as independent: sd 0.1155 / 2 = 0.0577, too small
    assert got["se"] < 0.6 * got["se_by_user"]
    # one impression per user: the error by user is the plain one, up to CR1's factor
    alone = {i: str(i) for i in range(4)}
    one = paired_against({"teacher_late_fusion": teacher, "model": model}, "teacher_late_fusion",
                         users=alone)["model"]["de"]  # fmt: skip
    assert abs(one["se_by_user"] - one["se"]) < 1e-12
