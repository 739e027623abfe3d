"""Rows that `mlrec shard` must refuse (strict) or count (skip), found before any tar is written:
impressions that share an id, impressions with no click, news ids that cannot be referenced."""

import pytest

from mlrec.data.layout import load_manifest, shard_files
from mlrec.data.loader import read_impressions
from mlrec.data.rows import DUPLICATE_IMPRESSION, NO_CLICK, DataError
from mlrec.data.shards import ShardInputs, build_shards
from tests.conftest import tiny_config


@pytest.fixture
def corpus(tmp_path):
    """A generated tiny corpus with its clean shards (the corpus is then edited per test)."""
    cfg = tiny_config(tmp_path)
    build_shards(ShardInputs.of(cfg), progress=False)
    return cfg


def _rewrite(path, edit):
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def test_concatenated_dev_files_with_shared_ids_stop_sharding(corpus):
    dev = corpus.corpus_dir / "dev" / "behaviors.tsv"
    rows = dev.read_text().splitlines()
    _rewrite(dev, lambda lines: lines.extend(rows[:3]))  # a second file appended: ids repeat
    before = {p.stat().st_mtime_ns for p in corpus.shards_dir.glob("dev-*.tar")}
    where = rf"{dev}:{len(rows) + 1}: impression id \d+ is already used at line 1"
    with pytest.raises(DataError, match=where):
        build_shards(ShardInputs.of(corpus), progress=False)
    # found while planning: no shard was rewritten
    assert {p.stat().st_mtime_ns for p in corpus.shards_dir.glob("dev-*.tar")} == before


def test_skip_policy_counts_repeated_impression_ids(corpus):
    dev = corpus.corpus_dir / "dev" / "behaviors.tsv"
    rows = dev.read_text().splitlines()
    _rewrite(dev, lambda lines: lines.extend(rows[:3]))
    corpus.data.on_error = "skip"
    manifest = build_shards(ShardInputs.of(corpus), progress=False)
    counts = manifest["rows"]["files"][str(dev)]
    assert counts["skipped"] == {DUPLICATE_IMPRESSION: 3}
    assert counts["rows"] == len(rows) + 3 == counts["kept"] + 3
    samples = list(read_impressions(shard_files(corpus.shards_dir, "dev")))
    assert len(samples) == len({s["impression"] for s in samples}) == len(rows)
    assert load_manifest(corpus.shards_dir)["splits"]["dev"]["impressions"] == len(rows)


def test_an_impression_without_a_click_is_an_error_or_a_counted_skip(corpus):
    dev = corpus.corpus_dir / "dev" / "behaviors.tsv"

    def no_click(lines):
        cols = lines[4].split("\t")
        cols[4] = cols[4].replace("-1", "-0")
        lines[4] = "\t".join(cols)

    _rewrite(dev, no_click)
    with pytest.raises(DataError, match=rf"{dev}:5: impression \d+ has no clicked candidate"):
        build_shards(ShardInputs.of(corpus), progress=False)
    corpus.data.on_error = "skip"
    manifest = build_shards(ShardInputs.of(corpus), progress=False)
    assert manifest["rows"]["files"][str(dev)]["skipped"] == {NO_CLICK: 1}


def test_a_news_id_with_an_at_sign_is_refused(corpus):
    news = corpus.corpus_dir / "news" / "en.tsv"

    def at_sign(lines):
        lines[0] = "N1@x" + lines[0][lines[0].index("\t") :]

    _rewrite(news, at_sign)
    with pytest.raises(DataError, match=rf"{news}:1: news id 'N1@x' contains '@'"):
        build_shards(ShardInputs.of(corpus), progress=False)


def test_a_byte_order_mark_is_not_part_of_the_first_id(corpus):
    """A BOM at the start of news.tsv made strict mode blame behaviors.tsv, and skip mode drop
    72 impressions as 'unknown news id'; at the start of behaviors.tsv it broke the first id."""
    clean = build_shards(ShardInputs.of(corpus), progress=False)
    root = corpus.corpus_dir
    for path in (root / "news" / "en.tsv", root / "dev" / "behaviors.tsv"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with_bom = build_shards(ShardInputs.of(corpus), progress=False)
    for split in ("train", "dev"):
        assert with_bom["splits"][split]["impressions"] == clean["splits"][split]["impressions"]
    assert with_bom["items"]["count"] == clean["items"]["count"]
