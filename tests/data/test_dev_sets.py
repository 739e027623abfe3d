"""Multilingual dev sets as users have them: xMIND's layout (one news file and one dev
behaviors file per language, plain MIND ids) and several named dev sets at once. A plain id is
read in the language of the file it comes from, never silently in another."""

import shutil

import pytest

from mlrec.config import ConfigError
from mlrec.data.corpus import behaviors_files
from mlrec.data.layout import dev_splits, item_index, load_manifest, shard_files
from mlrec.data.loader import read_impressions
from mlrec.data.shards import ShardInputs, build_shards
from tests.conftest import tiny_config, write_xmind_dev


def _xmind(tmp_path, corpus):
    """The tiny corpus laid out as xMIND is: news/<lang>/news.tsv, and the English dev
    impressions written with plain ids once per language in dev/<lang>/behaviors.tsv."""
    root = tmp_path / "xmind"
    (root / "train").mkdir(parents=True)
    shutil.copy(corpus / "train" / "behaviors.tsv", root / "train" / "behaviors.tsv")
    languages = sorted(p.stem for p in (corpus / "news").glob("*.tsv"))
    for lang in languages:
        (root / "news" / lang).mkdir(parents=True)
        shutil.copy(corpus / "news" / f"{lang}.tsv", root / "news" / lang / "news.tsv")
    return root, write_xmind_dev(corpus, root, ("de", "ru"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    cfg = tiny_config(tmp)
    from mlrec.data.corpus import prepare_corpus

    return prepare_corpus(cfg.data, cfg.corpus_dir)


def test_xmind_layout_reads_each_dev_file_in_its_own_language(tmp_path, generated):
    root, rows = _xmind(tmp_path, generated)
    cfg = tiny_config(tmp_path / "run", "data.source=mind", f"data.dir={root}")
    files = behaviors_files(cfg.data, cfg.corpus_dir)
    assert [(b.split, b.language) for b in files] == [
        ("train", "en"), ("dev_de", "de"), ("dev_ru", "ru"),
    ]  # fmt: skip
    manifest = build_shards(ShardInputs.of(cfg), progress=False)
    assert dev_splits(cfg.shards_dir) == ["dev_de", "dev_ru"]
    keys = [key for key, *_ in item_index(cfg.shards_dir)]
    for lang in ("de", "ru"):
        split = f"dev_{lang}"
        assert manifest["splits"][split]["impressions"] == rows
        assert manifest["splits"][split]["per_language"] == {lang: rows}
        for imp in read_impressions(shard_files(cfg.shards_dir, split)):
            assert imp["lang"] == lang
            # every candidate and click is the item in the file's language, not English
            assert all(keys[r].endswith(f"@{lang}") for r in imp["candidates"] + imp["history"])


def test_named_dev_sets_and_their_languages(tmp_path, generated):
    root, rows = _xmind(tmp_path, generated)
    sets = "{de: dev/de/behaviors.tsv, mixed: dev/ru/behaviors.tsv}"
    cfg = tiny_config(
        tmp_path / "run", "data.source=mind", f"data.dir={root}", f"data.dev_sets={sets}"
    )
    files = behaviors_files(cfg.data, cfg.corpus_dir)
    assert [(b.split, b.language) for b in files][1:] == [
        ("dev_de", "de"), ("dev_mixed", "en"),  # not a language: plain ids in default_language
    ]  # fmt: skip
    build_shards(ShardInputs.of(cfg), progress=False)
    assert load_manifest(cfg.shards_dir)["splits"]["dev_mixed"]["per_language"] == {"en": rows}


def test_no_dev_file_at_all_is_a_clear_error(tmp_path, generated):
    root, _ = _xmind(tmp_path, generated)
    shutil.rmtree(root / "dev")
    with pytest.raises(ConfigError, match=r"data.dev_behaviors .*dev/<lang>/behaviors.tsv"):
        tiny_config(tmp_path / "run", "data.source=mind", f"data.dir={root}")
