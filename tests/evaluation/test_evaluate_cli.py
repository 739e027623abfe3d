"""`mlrec evaluate RUN [--checkpoint STEP] [--data DIR_OR_CONFIG] [--out DIR]`: any checkpoint
on any dev data, without retraining and without overwriting another evaluation; per-language dev
files are scored on their own language's texts, next to the baselines and the transfer gap."""

import json
import shutil

import pytest
import yaml

from mlrec.cli import main
from mlrec.data.layout import item_index
from tests.conftest import TINY, write_xmind_dev


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("evalrun")
    assert main(["shard", "--config", str(TINY), f"run_dir={run}"]) == 0
    steps = ["train.keep_last=4", "train.checkpoint_every=10"]
    assert main(["train", "--config", str(TINY), f"run_dir={run}", *steps]) == 0
    return run


def test_another_checkpoint_to_another_folder_with_baselines_and_transfer(run, tmp_path, capsys):
    before = (run / "eval" / "metrics.json").read_bytes()
    out = tmp_path / "at-10"
    code = main([
        "evaluate", str(run), "--checkpoint", "10", "--out", str(out),
        "eval.reference_language=en",
    ])  # fmt: skip
    assert code == 0
    assert (run / "eval" / "metrics.json").read_bytes() == before  # not overwritten
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "prediction.txt").is_file() and (out / "predictions.tsv").is_file()
    assert metrics["overall"]["read"] == metrics["overall"]["scored"] == 200
    popularity = metrics["baselines"]["popularity"]
    assert popularity["overall"]["read"] == 200 and 0.5 < popularity["overall"]["auc"] < 1
    transfer = metrics["transfer"]["model"]
    assert "en" not in transfer and set(transfer) <= set(metrics["by_language"])
    for lang, row in transfer.items():
        assert row["paired"] + row["unpaired"] == metrics["by_language"][lang]["read"]
        assert row["gap"]["auc"] == pytest.approx(row["target"]["auc"] - row["reference"]["auc"])
    spread = metrics["spread"]
    aucs = [r["auc"] for r in metrics["by_language"].values()]
    assert spread["spread"] == pytest.approx(max(aucs) - min(aucs))
    assert "against baselines" in capsys.readouterr().out


def test_a_missing_checkpoint_names_those_there_are(run, tmp_path, capsys):
    before = (run / "eval" / "metrics.json").read_bytes()
    assert main(["evaluate", str(run), "--checkpoint", "10"]) == 2  # would replace eval/
    assert "need --out DIR" in capsys.readouterr().err
    assert (run / "eval" / "metrics.json").read_bytes() == before
    assert main(["evaluate", str(run), "--checkpoint", "7", "--out", str(tmp_path)]) == 2
    assert "checkpoints of steps under" in capsys.readouterr().err


def test_xmind_dev_files_are_scored_in_their_own_language(run, tmp_path):
    """The defect this fixes: dev/de/behaviors.tsv with plain ids (as xMIND's) was scored on
    the English texts and reported as en."""
    corpus = run / "corpus"
    xmind = tmp_path / "xmind"
    shutil.copytree(corpus / "news", xmind / "news")
    (xmind / "train").mkdir()
    shutil.copy(corpus / "train" / "behaviors.tsv", xmind / "train")
    rows = write_xmind_dev(corpus, xmind, ("de", "en"))
    config = tmp_path / "xmind.yaml"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"].update(source="mind", dir=str(xmind), shards_dir=str(tmp_path / "shards"))
    config.write_text(yaml.safe_dump(saved))
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", str(config), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dev_sets"]) == {"de", "en"}
    assert set(metrics["dev_sets"]["de"]["by_language"]) == {"de"}
    assert metrics["dev_sets"]["de"]["overall"]["read"] == rows
    # every candidate scored for the German set is a German item
    keys = [key for key, *_ in item_index(tmp_path / "shards")]
    lines = (out / "de" / "predictions.tsv").read_text().splitlines()[1:]
    assert lines and all(line.split("\t")[1].endswith("@de") for line in lines)
    assert all(key in keys for key in {line.split("\t")[1] for line in lines})
    assert (out / "en" / "prediction.txt").is_file()


def test_dev_data_with_another_tokenizer_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["shard", "--config", str(TINY), f"run_dir={other}", "model.vocab_size=3000"]) == 0
    code = main(["evaluate", str(run), "--data", str(other / "shards"), "--out", str(tmp_path)])
    assert code == 2
    assert "tokenised with another tokenizer" in capsys.readouterr().err


def test_rows_skipped_at_shard_time_are_stated_in_metrics(run, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(run / "corpus", corpus)
    dev = corpus / "dev" / "behaviors.tsv"
    lines = dev.read_text().splitlines()
    cols = lines[3].split("\t")
    cols[4] = cols[4].replace("-1", "-0")  # an impression without a click
    lines[3] = "\t".join(cols)
    dev.write_text("\n".join(lines) + "\n")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"].update(
        source="mind", dir=str(corpus), on_error="skip", shards_dir=str(tmp_path / "shards")
    )
    config = tmp_path / "skip.yaml"
    config.write_text(yaml.safe_dump(saved))
    assert main(["evaluate", str(run), "--data", str(config), "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["source"]["path"] == str(dev)
    assert metrics["source"]["skipped"] == {"no clicked candidate": 1}
    assert metrics["source"]["rows"] == len(lines) == metrics["overall"]["read"] + 1


def test_a_checkpoint_of_another_tokenizer_is_refused(run, tmp_path, capsys):
    """Re-sharding with another tokenizer renumbered the token ids under a trained checkpoint,
    which then scored other tokens without a word (AUC .6077 -> .5868)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("shards"))
    saved = (copy / "config.yaml").read_text().replace(str(run), str(copy))
    (copy / "config.yaml").write_text(saved)
    config = str(copy / "config.yaml")
    assert main(["shard", "--config", config, "model.vocab_size=3000"]) == 0  # another tokenizer
    assert main(["evaluate", str(copy)]) == 2
    assert "was trained with another tokenizer" in capsys.readouterr().err
    assert main(["train", "--config", config, "train.resume=latest", "train.steps=30"]) == 2
    assert "was trained with another tokenizer" in capsys.readouterr().err


def test_an_export_scores_as_its_checkpoint(run, tmp_path, capsys):
    assert main(["export", str(run), "export.onnx=false", "export.catalog_vectors=false"]) == 0
    export = run / "export"
    files = sorted(export.rglob("*"))
    assert main(["evaluate", str(export)]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["evaluate", str(export), "--out", str(tmp_path / "e")]) == 0
    from_export = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--out", str(tmp_path / "c")]) == 0
    from_checkpoint = json.loads((tmp_path / "c" / "metrics.json").read_text())
    for lang, row in from_checkpoint["by_language"].items():
        assert from_export["by_language"][lang]["auc"] == pytest.approx(row["auc"], abs=1e-5)
    assert sorted(export.rglob("*")) == files  # nothing written into the export
