"""A shard that is not what manifest.json records (cut, altered, a sample short, missing) is an
error naming the file and what to do, never silently fewer samples: a truncated tar once read
40 of its 73 samples without complaint, and evaluation scored 162 of 200 impressions as a full
result. Every read checks size and count; `mlrec shard --verify` and evaluation (dev sets) hash.

The shards are the real ones (`tiny_shards`, written by `mlrec shard`'s code), copied first."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mlrec.cli import main
from mlrec.data.layout import TOKENIZER_FILE, ShardFile, load_manifest, shard_files
from mlrec.data.loader import read_impressions, train_loader
from mlrec.data.tars import TarWriter
from mlrec.data.verify import ShardError
from tests.conftest import TINY

MLREC = str(Path(sys.executable).parent / "mlrec")
LOADER = dict(batch_size=8, negatives=4, max_history=10, seed=3)


def mlrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MLREC, *args], capture_output=True, text=True, timeout=600, check=False)


def verify(root: Path) -> subprocess.CompletedProcess:
    return mlrec("shard", "--verify", "--config", str(TINY), f"run_dir={root}")


def failed_cleanly(done: subprocess.CompletedProcess, message: str) -> bool:
    """Exit 2, `message` on stderr, and no traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return message in done.stderr


@pytest.fixture
def shards(tiny_shards: Path, tmp_path: Path) -> Path:
    """A copy of the tiny corpus and its shards (run_dir is the folder above), free to damage."""
    shutil.copytree(tiny_shards.parent, tmp_path / "run")
    return tmp_path / "run" / tiny_shards.name


@pytest.fixture(scope="module")
def trained(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained on a copy of the tiny shards, for `mlrec evaluate`."""
    root = tmp_path_factory.mktemp("integrity") / "run"
    shutil.copytree(tiny_shards.parent, root)
    assert main(["train", "--config", str(TINY), f"run_dir={root}"]) == 0
    return root


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, free to damage."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def a_shard(shards_dir: Path, split: str) -> ShardFile:
    """The English tar of the split's last unit (English: the most samples)."""
    return [s for s in shard_files(shards_dir, split) if s.language == "en"][-1]


def cut_mid_member(shard: ShardFile) -> int:
    """Truncate the tar in the middle of its third member's payload; returns the new size."""
    with tarfile.open(shard.path) as tar:
        member = tar.getmembers()[2]
    size = member.offset_data + member.size // 2
    os.truncate(shard.path, size)
    return size


def change_a_digit(shard: ShardFile) -> None:
    """One digit of the first sample's history, another digit: same size, still valid JSON."""
    data = bytearray(shard.path.read_bytes())
    at = data.index(b'"history":[') + len(b'"history":[')
    data[at] = ord("8") if data[at] == ord("9") else data[at] + 1
    shard.path.write_bytes(bytes(data))


def drop_last_sample(shard: ShardFile) -> None:
    """The tar written again without its last member, then zero-padded to its old size: a
    valid tar of one sample fewer that the size check cannot tell from the original."""
    with tarfile.open(shard.path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with TarWriter(shard.path.with_suffix(".tmp")) as writer:
        for name, payload in members[:-1]:
            writer.add(name, payload)
    assert writer.size <= shard.bytes
    with open(writer.path, "ab") as handle:
        handle.write(bytes(shard.bytes - writer.size))
    os.replace(writer.path, shard.path)
    with tarfile.open(shard.path) as tar:
        assert len(tar.getmembers()) == shard.samples - 1


def fix_for(shard: ShardFile) -> str:
    return f"remove {shard.unit_record} and run `mlrec shard` for {shard.path.parent} again"


def test_a_train_tar_cut_mid_member_stops_reading_training_and_verify(shards, capsys):
    shard = a_shard(shards, "train")
    size = cut_mid_member(shard)
    message = f"{shard.path}: {size} bytes, but the manifest records {shard.bytes}"
    with pytest.raises(ShardError, match=re.escape(message)) as err:
        list(read_impressions(shard_files(shards, "train")))
    assert fix_for(shard) in str(err.value)
    with pytest.raises(ShardError, match=re.escape(message)):
        train_loader(shards, num_workers=0, **LOADER)  # at once, before any worker starts
    assert main(["train", "--config", str(TINY), f"run_dir={shards.parent}"]) == 2
    assert f"mlrec train: error: {message}" in capsys.readouterr().err
    done = verify(shards.parent)
    assert failed_cleanly(done, message)
    assert "verified 42 shards, 1400 samples: 1 problem(s)" in done.stderr


def test_the_fix_the_message_names_rewrites_the_shard(shards):
    root = ["--config", str(TINY), f"run_dir={shards.parent}"]
    assert main(["shard", *root]) == 0  # the copy's own records (the corpus moved with it)
    shard = a_shard(shards, "train")
    cut_mid_member(shard)
    assert main(["shard", *root]) == 0  # a re-run writes a unit whose tar is cut or missing
    assert shard.path.stat().st_size == shard.bytes
    assert main(["shard", "--verify", *root]) == 0
    change_a_digit(shard)  # the same size: a re-run trusts the unit's record ...
    assert main(["shard", *root]) == 0
    assert main(["shard", "--verify", *root]) == 2
    shard.unit_record.unlink()  # ... until the record the message names is removed
    assert main(["shard", *root]) == 0
    assert main(["shard", "--verify", *root]) == 0


def test_a_dev_tar_cut_mid_member_stops_evaluation_before_scoring(run, tmp_path):
    shard = a_shard(run / "shards", "dev")
    size = cut_mid_member(shard)
    out = tmp_path / "eval"
    done = mlrec("evaluate", str(run), "--out", str(out))
    message = f"mlrec evaluate: error: {shard.path}: {size} bytes, but the manifest records"
    assert failed_cleanly(done, message), done.stderr[-3000:]
    assert fix_for(shard) in done.stderr
    assert not out.exists()  # nothing scored, nothing written


def test_a_changed_train_byte_passes_the_reads_but_not_verify(shards):
    shard = a_shard(shards, "train")
    before = list(read_impressions([shard]))
    change_a_digit(shard)
    after = list(read_impressions([shard]))  # same size, same count: the cheap checks pass
    assert len(after) == shard.samples and after != before
    done = verify(shards.parent)
    assert failed_cleanly(done, f"{shard.path}: sha256 "), done.stderr[-3000:]
    assert f"but the manifest records {shard.sha256} (changed since written)" in done.stderr


def test_a_changed_dev_byte_stops_evaluation_before_scoring(run, tmp_path):
    shard = a_shard(run / "shards", "dev")
    change_a_digit(shard)
    assert len(list(read_impressions([shard]))) == shard.samples
    out = tmp_path / "eval"
    done = mlrec("evaluate", str(run), "--out", str(out))
    assert failed_cleanly(done, f"mlrec evaluate: error: {shard.path}: sha256 "), done.stderr
    assert f"but the manifest records {shard.sha256}" in done.stderr
    assert not out.exists()


def test_a_tar_one_sample_short_is_a_count_mismatch(shards):
    shard = a_shard(shards, "train")
    drop_last_sample(shard)
    message = f"{shard.path}: {shard.samples - 1} samples read, but the manifest records "
    message += str(shard.samples)
    with pytest.raises(ShardError, match=re.escape(message)):
        list(read_impressions(shard_files(shards, "train")))
    # found in a DataLoader worker: the training process gets the same one line, not the
    # worker's traceback text (the CLI prints the message as it is)
    loader = train_loader(shards, num_workers=1, **LOADER)
    with pytest.raises(ShardError) as err:
        for _ in itertools.islice(loader, 1000):  # a few epochs of the tiny train set
            pass
    assert str(err.value).startswith(message) and "Traceback" not in str(err.value)


def test_a_missing_shard_is_named(shards, capsys):
    shard = a_shard(shards, "dev")
    shard.path.unlink()
    message = f"{shard.path}: missing (the manifest lists it: {shard.samples} samples"
    with pytest.raises(ShardError, match=re.escape(message)):
        list(read_impressions(shard_files(shards, "dev")))
    assert main(["shard", "--verify", "--config", str(TINY), f"run_dir={shards.parent}"]) == 2
    assert message in capsys.readouterr().err


def test_a_changed_tokenizer_is_reported_by_verify(shards, capsys):
    tokenizer = shards / TOKENIZER_FILE
    tokenizer.write_text(tokenizer.read_text() + "\n")
    assert main(["shard", "--verify", "--config", str(TINY), f"run_dir={shards.parent}"]) == 2
    err = capsys.readouterr().err
    assert f"{tokenizer}: sha256 " in err
    assert f"remove {shards / 'items' / 'items.json'} and run `mlrec shard`" in err


def test_an_intact_folder_verifies_and_reports_the_counts(shards):
    manifest = load_manifest(shards)
    splits = manifest["splits"].values()
    count = sum(len(split["shards"]) for split in splits)
    samples = sum(split["impressions"] for split in splits)
    assert (count, samples) == (42, 1400)  # the tiny corpus: 6 train units x 6 languages + dev
    done = verify(shards.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"verified {count} shards, {samples} samples: ok\n"
