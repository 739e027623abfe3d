"""Sharding: nothing lost under on_error=skip, byte-identical re-runs, restart, slices + merge."""

import json
import os

import pytest

from mlrec.cli import parse_slice
from mlrec.data.layout import MANIFEST, item_index, load_manifest, shard_files
from mlrec.data.loader import read_impressions
from mlrec.data.rows import BAD_LABEL, COLUMNS, EMPTY_TITLE, ENCODING, UNKNOWN_ITEM, DataError
from mlrec.data.shards import ShardInputs, build_shards, item_table, merge_shards, shard_slice
from tests.conftest import tiny_config


def _corrupt(cfg):
    """One malformed row of each kind; returns {file: {reason: count}} of what was broken."""
    build_shards(ShardInputs.of(cfg), progress=False)  # generates the corpus
    news = cfg.corpus_dir / "news" / "de.tsv"
    rows = news.read_bytes().splitlines(keepends=True)
    rows[1] = b"\t".join(rows[1].split(b"\t")[:4]) + b"\n"  # 4 columns
    cols = rows[2].split(b"\t")
    cols[3] = b" "
    rows[2] = b"\t".join(cols)  # empty title
    cols = rows[3].split(b"\t")
    cols[3] = b"\xff\xfe broken"
    rows[3] = b"\t".join(cols)  # undecodable
    news.write_bytes(b"".join(rows))
    behaviors = cfg.corpus_dir / "train" / "behaviors.tsv"
    lines = behaviors.read_text().splitlines()
    lines[4] = lines[4].replace("-1", "-1 N999999@en-0", 1)  # unknown news id
    lines[7] = lines[7].replace("-1", "-7", 1)  # bad label
    lines[9] = "\t".join(lines[9].split("\t")[:3])  # 3 columns
    behaviors.write_text("\n".join(lines) + "\n")
    return {
        str(news): {COLUMNS: 1, EMPTY_TITLE: 1, ENCODING: 1},
        str(behaviors): {BAD_LABEL: 1, COLUMNS: 1},  # + impressions citing the 3 lost items
    }


def test_skip_counts_every_row_and_strict_names_the_line(tmp_path):
    cfg = tiny_config(tmp_path, "data.on_error=skip")
    broken = _corrupt(cfg)
    manifest = build_shards(ShardInputs.of(cfg), progress=False)
    files = manifest["rows"]["files"]
    for path, counts in files.items():  # rows in = rows kept + duplicates + rows skipped
        assert counts["rows"] == counts["kept"] + counts["duplicates"] + sum(
            counts["skipped"].values()
        ), path
        with open(path, "rb") as handle:
            assert counts["rows"] == sum(1 for line in handle if line.strip())
    for path, reasons in broken.items():
        for reason, n in reasons.items():
            assert files[path]["skipped"][reason] == n
    train = str(cfg.corpus_dir / "train" / "behaviors.tsv")
    assert files[train]["skipped"][UNKNOWN_ITEM] >= 1
    split = manifest["splits"]["train"]
    assert (
        split["impressions"] == files[train]["kept"] == sum(s["samples"] for s in split["shards"])
    )

    strict = tiny_config(tmp_path)
    with pytest.raises(DataError, match=r"de\.tsv:2: expected 8 tab-separated columns"):
        build_shards(ShardInputs.of(strict), progress=False)


def _bytes(shards_dir):
    return {p.name: p.read_bytes() for p in sorted(shards_dir.glob("*.tar"))} | {
        "tokens": (shards_dir / "items" / "tokens.npy").read_bytes()
    }


def test_same_input_gives_identical_shards_and_reruns_skip_finished_units(tmp_path):
    one = tiny_config(tmp_path / "a")
    build_shards(ShardInputs.of(one), progress=False)
    # Hugging Face's Unigram trainer is not deterministic (4 trainings, 4 different vocabularies),
    # so the second build reuses the first one's tokenizer: same tokenizer, same bytes.
    two = tiny_config(
        tmp_path / "b",
        f"data.dir={one.corpus_dir}",
        f"model.tokenizer={one.shards_dir / 'tokenizer'}",
    )
    # other folder, other process layout
    build_shards(ShardInputs.of(two), progress=False, workers=2)
    first = _bytes(one.shards_dir)
    assert first == _bytes(two.shards_dir)

    # an interrupted run: one unit's record and tar missing; the re-run rewrites only that unit
    victim = one.shards_dir / "train-000002.json"
    victim.unlink()
    next(one.shards_dir.glob("train-000002-*.tar")).unlink()
    untouched = one.shards_dir / "train-000001.json"
    stamp = untouched.stat().st_mtime_ns
    os.utime(untouched, ns=(stamp - 10**9, stamp - 10**9))
    build_shards(ShardInputs.of(one), progress=False)
    assert untouched.stat().st_mtime_ns == stamp - 10**9
    assert victim.is_file()
    assert _bytes(one.shards_dir) == first


def test_slices_then_merge_equal_one_run(tmp_path):
    whole = tiny_config(tmp_path / "whole")
    expected = build_shards(ShardInputs.of(whole), progress=False)
    cfg = tiny_config(tmp_path / "sliced", f"data.dir={whole.corpus_dir}")
    inputs = ShardInputs.of(cfg)
    item_table(inputs, progress=False)  # `mlrec shard --items`, then the slices
    assert shard_slice(inputs, 0, 3, progress=False) > 0
    with pytest.raises(FileNotFoundError, match="--slice"):
        merge_shards(inputs)  # slices 1 and 2 have not run
    for index in (1, 2):
        shard_slice(inputs, index, 3, progress=False)
    merged = merge_shards(inputs)
    assert (cfg.shards_dir / MANIFEST).is_file()
    assert merged["splits"]["train"]["shards"] == expected["splits"]["train"]["shards"]
    assert merged["splits"]["dev"]["per_language"] == expected["splits"]["dev"]["per_language"]
    assert json.loads((cfg.shards_dir / MANIFEST).read_text()) == load_manifest(cfg.shards_dir)
    assert parse_slice("2/3") == (2, 3)
    with pytest.raises(ValueError, match="I/N"):
        parse_slice("3")


def test_xmind_rows_take_mind_categories(tmp_path, tiny_shards):
    root = tmp_path / "mind"
    (root / "train").mkdir(parents=True)
    (root / "xmind").mkdir()
    (root / "train" / "news.tsv").write_text(
        "N1\tsports\tsoccer\tGoal\tA goal\tu\t[]\t[]\nN2\tfinance\tmarkets\tStocks\tUp\tu\t[]\t[]\n"
    )
    (root / "xmind" / "de.tsv").write_text("N1\tTor\tEin Tor\nN9\tUnbekannt\tx\n")
    behaviors = "1\tU1\tt\tN1\tN1@de-1 N2-0\n"
    (root / "train" / "behaviors.tsv").write_text(behaviors)
    (root / "dev").mkdir()
    (root / "dev" / "behaviors.tsv").write_text(behaviors.replace("N1@de-1", "N2-1 N1@de-0"))
    cfg = tiny_config(
        tmp_path,
        "data.source=mind",
        f"data.dir={root}",
        "data.on_error=skip",
        "data.news={en: [train/news.tsv], de: [xmind/de.tsv]}",
        f"model.tokenizer={tiny_shards / 'tokenizer'}",
    )
    manifest = build_shards(ShardInputs.of(cfg), progress=False)
    index = {key: (cat, sub) for key, _, cat, sub in item_index(cfg.shards_dir)}
    assert index["N1@de"] == ("sports", "soccer")
    assert "N9@de" not in index
    assert manifest["rows"]["files"][str(root / "xmind" / "de.tsv")]["skipped"] == {UNKNOWN_ITEM: 1}
    assert manifest["splits"]["train"]["per_language"] == {"de": 1}


def test_a_rebuilt_item_table_is_not_read_from_an_earlier_build(tmp_path):
    cfg = tiny_config(tmp_path, "data.on_error=skip")
    # generates the corpus; the process now knows its rows
    build_shards(ShardInputs.of(cfg), progress=False)
    news = cfg.corpus_dir / "news" / "de.tsv"
    news.write_bytes(b"".join(news.read_bytes().splitlines(keepends=True)[1:]))  # rows shift
    manifest = build_shards(ShardInputs.of(cfg), progress=False)
    keys = [key for key, *_ in item_index(cfg.shards_dir)]
    refs = {}
    for line in (cfg.corpus_dir / "train" / "behaviors.tsv").read_text().splitlines():
        imp, _, _, _, shown = line.split("\t")
        refs[int(imp)] = [t[:-2] if "@" in t else f"{t[:-2]}@en" for t in shown.split()]
    samples = list(read_impressions(shard_files(cfg.shards_dir, "train")))
    assert len(samples) == manifest["splits"]["train"]["impressions"] < len(refs)
    for sample in samples:
        assert [keys[row] for row in sample["candidates"]] == refs[sample["impression"]]


def test_item_instruction_prefixes_every_item_and_rebuilds_the_table(tmp_path):
    import numpy as np

    from mlrec.data.layout import ITEM_TOKENS, TOKENIZER_DIR
    from mlrec.data.tokenizer import load_tokenizer

    cfg = tiny_config(tmp_path)
    build_shards(ShardInputs.of(cfg), progress=False)
    before = np.load(cfg.shards_dir / ITEM_TOKENS)
    instruction = "news article: "
    cfg = tiny_config(tmp_path, f'data.item_instruction="{instruction}"')  # YAML: quoted
    build_shards(ShardInputs.of(cfg), progress=False)  # the same folder: the table is rebuilt
    after = np.load(cfg.shards_dir / ITEM_TOKENS)
    tok = load_tokenizer(cfg.shards_dir / TOKENIZER_DIR)
    titles = {}
    for lang in ("de", "ja"):
        for line in (cfg.corpus_dir / "news" / f"{lang}.tsv").read_text().splitlines():
            cols = line.split("\t")
            titles[f"{cols[0]}@{lang}"] = cols[3]
    keys = [key for key, *_ in item_index(cfg.shards_dir)]
    checked = 0
    for row, key in enumerate(keys):
        if key not in titles:
            continue
        checked += 1
        ids = tok(instruction + titles[key], truncation=True, max_length=after.shape[1])
        assert after[row][: len(ids["input_ids"])].tolist() == ids["input_ids"]
        assert not np.array_equal(after[row], before[row])
    assert checked == 480  # every German and Japanese item
