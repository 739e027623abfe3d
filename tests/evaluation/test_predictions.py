"""Evaluation's scores out, checked by a scorer of our own, and its accounting of every impression.

The scorer below re-implements msnews/MIND's evaluate.py (which reads prediction.txt against a
truth file of labels) without mlrec.evaluation.metrics, so metrics.json is checked against the
leaderboard's arithmetic, not against itself. Truth comes straight from the dev tars (tarfile
and json, not mlrec's loader); the odd dev sets (a repeated impression id, impressions without a
click) are real tars written with TarWriter into a copy of the shards.
"""

from __future__ import annotations

import json
import math
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import tiny_config

METRIC_NAMES = ("auc", "mrr", "ndcg@5", "ndcg@10")


# ---- the independent scorer: MIND's evaluate.py formulas, scores = 1 / rank as it takes them


def mind_auc(labels: list[int], scores: list[float]) -> float:
    """Mann-Whitney: AUC = (sum of the positives' ascending ranks - P(P+1)/2) / (P N), ranks of
    tied scores averaged (roc_auc_score's value)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            rank[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    return (sum(r for r, y in zip(rank, labels, strict=True) if y) - pos * (pos + 1) / 2) / (
        pos * neg
    )


def _descending(labels: list[int], scores: list[float]) -> list[int]:
    # np.argsort(y_score)[::-1]; the scores are 1 / distinct ranks, so there are no ties to order
    return [labels[i] for i in sorted(range(len(scores)), key=lambda i: -scores[i])]


def mind_mrr(labels: list[int], scores: list[float]) -> float:
    ranked = _descending(labels, scores)
    return sum(y / (i + 1) for i, y in enumerate(ranked)) / sum(ranked)


def mind_dcg(ranked: list[int], k: int) -> float:
    return sum((2**y - 1) / math.log2(i + 2) for i, y in enumerate(ranked[:k]))


def mind_ndcg(labels: list[int], scores: list[float], k: int) -> float:
    return mind_dcg(_descending(labels, scores), k) / mind_dcg(sorted(labels, reverse=True), k)


def parse_prediction_line(line: str) -> tuple[int, list[int]]:
    impression, ranks = line.rstrip("\n").split()  # as MIND's parse_line: exactly two fields
    return int(impression), json.loads(ranks)


def score_leaderboard_file(path: Path, truth: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Per-language and overall means of MIND's four metrics over the scorable impressions,
    reading prediction.txt in lockstep with the truth in ascending impression id (the order of
    MIND's truth.txt)."""
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == len(truth)
    values: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for line, impression in zip(lines, sorted(truth), strict=True):
        got, ranks = parse_prediction_line(line)
        assert got == impression, "lines must follow the truth's order"
        labels = truth[impression]["labels"]
        assert sorted(ranks) == list(range(1, len(labels) + 1))
        if not 0 < sum(labels) < len(labels):
            continue  # MIND's roc_auc_score cannot score these; metrics.json counts them
        scores = [1 / r for r in ranks]
        row = (
            mind_auc(labels, scores),
            mind_mrr(labels, scores),
            mind_ndcg(labels, scores, 5),
            mind_ndcg(labels, scores, 10),
        )
        values[truth[impression]["lang"]].append(row)
        values["overall"].append(row)
    return {
        name: {m: sum(r[i] for r in rows) / len(rows) for i, m in enumerate(METRIC_NAMES)}
        | {"scored": len(rows)}
        for name, rows in values.items()
    }


# ---- real files: dev tars read with tarfile, and rewritten with TarWriter


def dev_shards(shards_dir: Path) -> list[dict]:
    return json.loads((shards_dir / "manifest.json").read_text())["splits"]["dev"]["shards"]


def read_tar(path: Path) -> list[dict]:
    with tarfile.open(path) as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers()]


def dev_truth(shards_dir: Path) -> dict[int, dict]:
    """Impression id -> its sample, from every dev tar of the manifest."""
    truth: dict[int, dict] = {}
    for shard in dev_shards(shards_dir):
        for sample in read_tar(shards_dir / shard["name"]):
            assert sample["impression"] not in truth
            truth[sample["impression"]] = sample
    return truth


def rewrite_dev(src: Path, dst: Path, edit) -> Path:
    """A copy of the shards at `src` whose dev split is `edit([(name, language, samples)])`,
    written as real tars with a manifest that lists them."""
    from mlrec.data.tars import TarWriter

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    dev = manifest["splits"]["dev"]
    for shard in dev["shards"]:
        (dst / shard["name"]).unlink()
    old = [(s["name"], s["language"], read_tar(src / s["name"])) for s in dev["shards"]]
    dev["shards"] = []
    for name, lang, samples in edit(old):
        with TarWriter(dst / name) as tar:
            for sample in samples:
                tar.add(f"dev-{sample['impression']}.json", json.dumps(sample).encode())
        dev["shards"].append(
            {
                "name": name,
                "language": lang,
                "samples": tar.samples,
                "bytes": tar.size,
                "sha256": tar.sha256,
            }
        )
    per_language: dict[str, int] = defaultdict(int)
    for shard in dev["shards"]:
        per_language[shard["language"]] += shard["samples"]
    dev["per_language"] = dict(sorted(per_language.items()))
    dev["impressions"] = sum(per_language.values())
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


# ---- evaluating a random tiny model


@pytest.fixture(scope="module")
def model_and_pad(tiny_shards, tmp_path_factory):
    from mlrec.data.layout import TOKENIZER_DIR, load_manifest
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.models.recommender import build_recommender

    cfg = tiny_config(tmp_path_factory.mktemp("cfg"), f"data.shards_dir={tiny_shards}")
    pad = load_manifest(tiny_shards)["tokenizer"]["pad_token_id"]
    torch.manual_seed(0)
    model = build_recommender(cfg.model, len(load_tokenizer(tiny_shards / TOKENIZER_DIR)), pad)
    return model, pad, cfg


def run_eval(model_and_pad, shards_dir: Path, out_dir: Path | None, **kw) -> dict:
    from mlrec.evaluation.ranking import evaluate

    model, pad, cfg = model_and_pad
    return evaluate(
        model,
        Accelerator(cpu=True),
        shards_dir,
        pad,
        batch_size=64,
        max_history=cfg.data.max_history,
        out_dir=out_dir,
        **kw,
    )


@pytest.fixture(scope="module")
def evaluated(model_and_pad, tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    returned = run_eval(model_and_pad, tiny_shards, out)
    return out, returned


def test_metrics_json_agrees_with_an_independent_mind_scorer(evaluated, tiny_shards):
    out, returned = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    truth = dev_truth(tiny_shards)
    scored = score_leaderboard_file(out / "prediction.txt", truth)
    rows = {**metrics["by_language"], "overall": metrics["overall"]}
    assert set(scored) == set(rows)
    for name, row in rows.items():
        assert row["scored"] == scored[name]["scored"]
        for m in METRIC_NAMES:
            assert row[m] == pytest.approx(scored[name][m], abs=1e-6), (name, m)


def test_predictions_tsv_has_every_candidate_and_matches_the_ranks(evaluated, tiny_shards):
    from mlrec.data.layout import item_index

    out, _ = evaluated
    truth = dev_truth(tiny_shards)
    keys = [row[0] for row in item_index(tiny_shards)]
    lines = (out / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "impression\tcandidate\tscore"
    by_impression: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for line in lines[1:]:
        impression, candidate, score = line.split("\t")
        by_impression[int(impression)].append((candidate, float(score)))
    assert len(lines) - 1 == sum(len(s["candidates"]) for s in truth.values())
    assert set(by_impression) == set(truth)
    known = set(keys)
    ranks = dict(
        parse_prediction_line(line) for line in (out / "prediction.txt").read_text().splitlines()
    )
    for impression, sample in truth.items():
        rows = by_impression[impression]
        assert all(c in known and "@" in c for c, _ in rows)
        assert [c for c, _ in rows] == [keys[r] for r in sample["candidates"]]
        scores = [s for _, s in rows]
        # distinct scores, so rank-based AUC (the leaderboard's) equals ours (ties count half)
        assert len(set(scores)) == len(scores), f"tied scores in impression {impression}"
        expected = [
            1 + sum(t > s for t in scores) + sum(t == s for t in scores[:i])
            for i, s in enumerate(scores)
        ]
        assert ranks[impression] == expected
    # one leaderboard line per impression, MIND's exact shape: no spaces inside the brackets
    text = (out / "prediction.txt").read_text()
    first = text.splitlines()[0]
    assert first == f"{min(truth)} [{','.join(map(str, ranks[min(truth)]))}]"
    assert text.endswith("\n") and " " not in first.split(" ", 1)[1]


def test_every_impression_read_is_accounted_for(evaluated, tiny_shards):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    dev = json.loads((tiny_shards / "manifest.json").read_text())["splits"]["dev"]
    for name, row in [*metrics["by_language"].items(), ("overall", metrics["overall"])]:
        assert row["read"] == row["scored"] + sum(row["unscored"].values()), name
        assert row["impressions"] == row["scored"]
        assert set(row["unscored"]) == {"no click", "all clicked"}
    assert metrics["overall"]["read"] == dev["impressions"]
    assert {k: r["read"] for k, r in metrics["by_language"].items()} == dev["per_language"]
    assert "limited_to" not in metrics


def test_max_impressions_says_it_cut(model_and_pad, tiny_shards, tmp_path):
    metrics = run_eval(model_and_pad, tiny_shards, tmp_path, max_impressions=50)
    assert metrics["limited_to"] == 50 and metrics["overall"]["read"] == 50
    assert len((tmp_path / "prediction.txt").read_text().splitlines()) == 50
    total = json.loads((tiny_shards / "manifest.json").read_text())["splits"]["dev"]["impressions"]
    assert "limited_to" not in run_eval(model_and_pad, tiny_shards, None, max_impressions=total)


def test_a_repeated_impression_id_is_an_error(model_and_pad, tiny_shards, tmp_path):
    from mlrec.data.rows import DataError

    def second_file_reusing_an_id(shards):
        _, lang, samples = shards[-1]
        reused = shards[0][2][0]["impression"]  # an id the first dev file already has
        return [*shards, (f"dev-000099-{lang}.tar", lang, [samples[0] | {"impression": reused}])]

    copy = rewrite_dev(tiny_shards, tmp_path / "shards", second_file_reusing_an_id)
    impression = read_tar(copy / dev_shards(copy)[0]["name"])[0]["impression"]
    with pytest.raises(DataError, match=f"impression id {impression} .*unique within a dev set"):
        run_eval(model_and_pad, copy, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()  # nothing half-written


def test_impressions_without_a_click_are_counted_not_dropped(model_and_pad, tiny_shards, tmp_path):
    silent_lang = dev_shards(tiny_shards)[-1]["language"]

    def unclicked(shards):
        edited = []
        for name, lang, samples in shards:
            if lang == silent_lang:  # a whole language that cannot be scored
                samples = [s | {"labels": [0] * len(s["labels"])} for s in samples]
            edited.append((name, lang, samples))
        name, lang, samples = next(s for s in edited if s[1] != silent_lang)
        samples[0] = samples[0] | {"labels": [1] * len(samples[0]["labels"])}
        return edited

    copy = rewrite_dev(tiny_shards, tmp_path / "shards", unclicked)
    truth = dev_truth(copy)
    silent = sum(s["lang"] == silent_lang for s in truth.values())
    out = tmp_path / "eval"
    metrics = run_eval(model_and_pad, copy, out)
    overall = metrics["overall"]
    assert overall["read"] == len(truth)
    assert overall["unscored"] == {"no click": silent, "all clicked": 1}
    assert overall["scored"] == len(truth) - silent - 1
    row = metrics["by_language"][silent_lang]
    assert row == {
        "impressions": 0,
        "read": silent,
        "scored": 0,
        "unscored": {"no click": silent, "all clicked": 0},
    }
    # unscored impressions still have scores in both files
    assert len((out / "prediction.txt").read_text().splitlines()) == len(truth)
    rows = (out / "predictions.tsv").read_text().count("\n") - 1
    assert rows == sum(len(s["candidates"]) for s in truth.values())
    # and the independent scorer, skipping the same impressions, still agrees
    scored = score_leaderboard_file(out / "prediction.txt", truth)
    assert silent_lang not in scored
    for m in METRIC_NAMES:
        assert overall[m] == pytest.approx(scored["overall"][m], abs=1e-6)

    from mlrec.evaluation.metrics import format_table

    line = next(x for x in format_table(metrics).splitlines() if x.startswith(silent_lang))
    assert line.split()[1:] == [str(silent), "0", "-", "-", "-", "-"]
