"""The transfer report's pieces: swapping an impression into the reference language, pairing,
the gap table and the spread across languages."""

from mlrec.evaluation.transfer import Swapper, paired, spread, transfer_table

KEYS = ["N1@en", "N2@en", "N1@de", "N2@de", "N3@de", "N1@fr"]


def _imp(imp_id, lang, history, candidates, labels):
    return {"impression": imp_id, "lang": lang, "history": history,
            "candidates": candidates, "labels": labels}  # fmt: skip


def test_an_impression_is_swapped_item_by_item_or_not_at_all():
    swap = Swapper(KEYS, "en")
    german = _imp(7, "de", [2], [3, 2], [1, 0])
    english = swap(german)
    assert english["history"] == [0] and english["candidates"] == [1, 0]
    assert english["labels"] == [1, 0] and english["lang"] == "de"  # reported under German
    assert swap(_imp(8, "de", [2], [4, 2], [1, 0])) is None  # N3 has no English version


def test_pairing_counts_what_cannot_be_swapped_and_skips_the_reference_language():
    swap = Swapper(KEYS, "en")
    imps = [
        _imp(1, "de", [2], [3, 2], [1, 0]),
        _imp(2, "de", [], [4, 2], [1, 0]),
        _imp(3, "en", [0], [1, 0], [0, 1]),
        _imp(4, "fr", [], [5], [1]),
    ]
    targets, references, missing = paired(imps, swap)
    assert [t["impression"] for t in targets] == [1, 4]
    assert [r["candidates"] for r in references] == [[1, 0], [0]]
    assert missing == {"de": 1}


def test_the_gap_is_target_minus_reference_on_the_same_impressions():
    row = {"auc": 0.6, "mrr": 0.4, "impressions": 10, "read": 10, "scored": 10, "unscored": {}}
    ref = {"auc": 0.7, "mrr": 0.5, "impressions": 10, "read": 10, "scored": 10, "unscored": {}}
    table = transfer_table({"by_language": {"de": row}}, {"by_language": {"de": ref}}, {"de": 3})
    assert table["de"]["paired"] == 10 and table["de"]["unpaired"] == 3
    assert abs(table["de"]["gap"]["auc"] + 0.1) < 1e-12
    assert table["de"]["target"] == {"auc": 0.6, "mrr": 0.4}


def test_spread_is_best_minus_worst():
    got = spread({"en": {"auc": 0.8}, "de": {"auc": 0.7}, "ja": {"auc": 0.65}})
    assert got["best"] == "en" and got["worst"] == "ja"
    assert abs(got["spread"] - 0.15) < 1e-12
