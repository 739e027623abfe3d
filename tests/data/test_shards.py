import json
import tarfile

import numpy as np
import pytest
from transformers import AutoTokenizer

from mlrec.data.layout import ITEM_TOKENS, item_index, load_manifest, shard_files
from mlrec.data.loader import read_impressions
from mlrec.data.mind import read_behaviors
from mlrec.data.rows import DataError
from mlrec.data.shards import ShardInputs, build_shards
from mlrec.io import sha256
from tests.conftest import tiny_config


def test_manifest_accounts_for_every_row(tiny_shards):
    manifest = load_manifest(tiny_shards)
    corpus = tiny_shards.parent / "corpus"
    for split in ("train", "dev"):
        rows = sum(1 for _ in read_behaviors(corpus / split / "behaviors.tsv", "en"))
        info = manifest["splits"][split]
        assert info["impressions"] == rows
        assert sum(info["per_language"].values()) == rows
        samples = list(read_impressions(shard_files(tiny_shards, split)))
        assert len(samples) == rows
        assert len({s["impression"] for s in samples}) == rows
        for shard in info["shards"]:
            assert sha256(tiny_shards / shard["name"]) == shard["sha256"]
    assert len(manifest["splits"]["train"]["shards"]) >= 4  # enough for 2 ranks x 2 workers


def test_items_are_tokenised_once_and_referenced(tiny_shards):
    manifest = load_manifest(tiny_shards)
    table = np.load(tiny_shards / ITEM_TOKENS)
    index = item_index(tiny_shards)
    assert table.shape == (manifest["items"]["count"], manifest["items"]["max_tokens"])
    assert len(index) == len(table)
    assert len({key for key, *_ in index}) == len(index)  # each (news id, language) once
    # the shards hold row numbers, not text
    with tarfile.open(shard_files(tiny_shards, "train")[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        sample = json.loads(tar.extractfile(member).read())
    assert all(isinstance(r, int) and 0 <= r < len(table) for r in sample["candidates"])
    # the rows are the tokenizer's encoding of the item's title
    tok = AutoTokenizer.from_pretrained(str(tiny_shards / "tokenizer"))
    key, lang, *_ = index[0]
    nid = key.split("@")[0]
    news = (tiny_shards.parent / "corpus" / "news" / f"{lang}.tsv").read_text().splitlines()
    title = next(line.split("\t")[3] for line in news if line.split("\t")[0] == nid)
    expected = tok(title, truncation=True, max_length=table.shape[1])["input_ids"]
    assert table[0, : len(expected)].tolist() == expected


def test_tokenizer_has_xlmr_special_ids(tiny_shards):
    tok = AutoTokenizer.from_pretrained(str(tiny_shards / "tokenizer"))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tok.unk_token_id, tok.mask_token_id) == (3, 4)
    ids = tok("Привет мир")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2


def test_unknown_item_is_reported_with_line(tmp_path):
    cfg = tiny_config(tmp_path)
    build_shards(ShardInputs.of(cfg), progress=False)  # generates the corpus
    behaviors = cfg.corpus_dir / "dev" / "behaviors.tsv"
    lines = behaviors.read_text().splitlines()
    lines[2] = lines[2].replace("-1", "-1 N999999@en-0", 1)
    behaviors.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{behaviors}:3: impressions refers to N999999@en"):
        build_shards(ShardInputs.of(cfg), progress=False)


def test_shards_read_the_same_through_webdataset(tiny_shards):
    """mlrec reads its tars itself (with the manifest's checks); they stay webdataset shards,
    which other tools read as they are."""

    import webdataset as wds

    shards = shard_files(tiny_shards, "dev")
    ours = list(read_impressions(shards))
    theirs = [
        json.loads(sample["json"])
        for sample in wds.WebDataset(
            [str(s.path) for s in shards], shardshuffle=False, empty_check=False
        )
    ]
    assert theirs == ours and len(ours) == sum(s.samples for s in shards)
