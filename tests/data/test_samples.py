"""SampleEncoder gives the reference reader's samples and errors; shards hold exactly the samples
that the reference reader and tarfile would write."""

import io
import tarfile
from contextlib import ExitStack
from pathlib import Path

import pytest

from mlrec.data.layout import item_keys, load_manifest
from mlrec.data.rows import (
    BAD_ID,
    BAD_LABEL,
    COLUMNS,
    ENCODING,
    NO_CLICK,
    NO_IMPRESSIONS,
    UNKNOWN_ITEM,
    DataError,
)
from mlrec.data.samples import SampleEncoder, reference_sample
from mlrec.data.shards import plan_units
from mlrec.data.tars import MODE

KEYS = [
    (("N1", "en"), 0),
    (("N2", "en"), 1),
    (("N1", "de"), 2),
    (("N3", "ru"), 3),
    (("N-4", "de"), 4),
    (("N5", "en"), 6),
    (("N5", "en"), 7),  # a repeated key: the last row wins
]
PATH = Path("behaviors.tsv")

GOOD = [
    "1\tU1\tt\tN1 N2@en N1@de\tN1-1 N2-0",
    '2\tU"é\\x\tt\t\tN1@de-0 N-4@de-1 N1-0',  # escaped user, empty history
    "3\tU\tt\tN1\tN1-1 N1@de-0",  # a tie: the first language seen
    "4\tU\tt\tN1\tN1@de-1 N1-0",
    "5\tU\tt\tN5\tN3@ru-0 N1-1 N1@de-0 N1@de-1 N3@ru-0 N2-0",  # three-way tie
    " 7\tU\tt\tN1  N2\u2003N1@de\tN5-1 N2-0 N1@de-0",  # spaced id, odd whitespace
]
BAD = {
    "1\tU\tt\tN1": COLUMNS,
    "1\tU\tt\tN1\tN1-1\tx": COLUMNS,
    "x\tU\tt\tN1\tN1-1": BAD_ID,
    "1\tU\tt\tN1\tN1-2": BAD_LABEL,
    "1\tU\tt\tN1\tN1": BAD_LABEL,
    "1\tU\tt\tN1\t": NO_IMPRESSIONS,
    "1\tU\tt\tN1\tN9-1": UNKNOWN_ITEM,
    "1\tU\tt\tN9\tN1-1": UNKNOWN_ITEM,
    "1\tU\tt\tN9\tN1-1 N2-7": BAD_LABEL,  # the label is checked before the refs
    "1\tU\tt\tN9\tN8-1": UNKNOWN_ITEM,  # history first: "history refers to N9@en"
    "1\tU\tt\tN1\t-1": UNKNOWN_ITEM,
    "1\tU\tt\tN1\ta@b-1": UNKNOWN_ITEM,  # news a in language b
    "1\tU\tt\tN1\tN1-0 N2-0": NO_CLICK,
    "1\tU\tt\tN1\tN1@-1": UNKNOWN_ITEM,
    "1\tU\tt\tN1\tN1@ru-1": UNKNOWN_ITEM,
}


def _reference(raw):
    return reference_sample(raw, PATH, 3, dict(KEYS), "en")


@pytest.mark.parametrize("row", GOOD)
def test_samples_equal_the_reference(row):
    raw = row.encode()
    assert SampleEncoder(KEYS, "en").encode(raw, PATH, 3) == _reference(raw)


@pytest.mark.parametrize(("row", "reason"), [*BAD.items(), ("\xff", ENCODING)])
def test_errors_equal_the_reference(row, reason):
    raw = row.encode("latin-1" if row == "\xff" else "utf-8")
    with pytest.raises(DataError) as expected:
        _reference(raw)
    with pytest.raises(DataError) as got:
        SampleEncoder(KEYS, "en").encode(raw, PATH, 3)
    assert (str(got.value), got.value.reason) == (str(expected.value), expected.value.reason)
    assert got.value.reason == reason


def test_corpus_rows_equal_the_reference(tiny_shards):
    encoder = SampleEncoder(item_keys(tiny_shards), "en")
    row_of = dict(item_keys(tiny_shards))
    corpus = tiny_shards.parent / "corpus"
    for split in ("train", "dev"):
        path = corpus / split / "behaviors.tsv"
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            assert encoder.encode(raw, path, number) == reference_sample(
                raw, path, number, row_of, "en"
            )


def test_shards_are_what_tarfile_writes_from_reference_samples(tiny_shards):
    manifest = load_manifest(tiny_shards)
    row_of = dict(item_keys(tiny_shards))
    path = tiny_shards.parent / "corpus" / "train" / "behaviors.tsv"
    per_unit = manifest["config"]["shard_max_samples"]
    unit = plan_units(path, "train", per_unit)[0][1]
    lines = path.read_bytes().splitlines()[unit.first_line - 1 :][:per_unit]
    by_lang: dict[str, io.BytesIO] = {}
    with ExitStack() as stack:
        tars: dict[str, tarfile.TarFile] = {}
        for number, raw in enumerate(lines, start=unit.first_line):
            lang, impression, payload = reference_sample(raw, path, number, row_of, "en")
            if lang not in tars:
                by_lang[lang] = io.BytesIO()
                tars[lang] = stack.enter_context(
                    tarfile.open(fileobj=by_lang[lang], mode="w", format=tarfile.USTAR_FORMAT)
                )
            info = tarfile.TarInfo(f"train-{impression}.json")
            info.size, info.mtime, info.mode = len(payload), 0, MODE
            tars[lang].addfile(info, io.BytesIO(payload))
    assert len(by_lang) > 1
    for lang, buffer in by_lang.items():
        assert (tiny_shards / f"{unit.name}-{lang}.tar").read_bytes() == buffer.getvalue()
