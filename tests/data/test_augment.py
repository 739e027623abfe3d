"""Code-switching from freedict (dictd) lexicons and the back-translation hook."""

import gzip
import shutil
import subprocess

import pytest

from mlrec.config import ConfigError
from mlrec.data.augment import _B64, CodeSwitcher, back_translated, read_freedict
from mlrec.data.parallel import Pair


def _b64(n: int) -> str:
    out = ""
    while True:
        out = _B64[n % 64] + out
        n //= 64
        if not n:
            return out


def write_dictd(folder, name, entries):
    """A dictd dictionary as freedict ships it: sorted .index lines and a gzipped .dict.dz."""
    body, index = b"", []
    for head, text in entries.items():
        chunk = f"{head} /x/\n{text}\n".encode()
        index.append(f"{head}\t{_b64(len(body))}\t{_b64(len(chunk))}")
        body += chunk
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.index").write_text("\n".join(sorted(index)) + "\n")
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(body))
    return folder / f"{name}.index"


def test_code_switching(tmp_path):
    index = write_dictd(
        tmp_path / "dict",
        "freedict-eng-fra",
        {"house": "maison", "cat": "1. mégère, rosse\n2. chat", "air gun": "fusil à air"},
    )
    assert read_freedict(index) == {"house": "maison", "cat": "mégère"}
    always = CodeSwitcher.from_paths([str(tmp_path / "dict")], 1.0)
    assert always("The House, the cat!", "fr") == "The maison, the mégère!"
    assert always("The house", "de") == "The house"  # no lexicon for German: unchanged
    never = CodeSwitcher.from_paths([str(index)], 0.0)
    assert never("The house", "fr") == "The house"
    half = CodeSwitcher({"fr": {"a": "b"}}, 0.5, seed=1)
    swapped = half(" ".join(["a"] * 1000), "fr").split().count("b")
    assert 400 < swapped < 600
    with pytest.raises(ConfigError, match="align.lexicons"):
        CodeSwitcher.from_paths([], 0.3)


def test_back_translation_hook():
    pairs = [Pair("Hello", "Bonjour", "en", "fr")]
    made = back_translated(pairs, lambda text, src, tgt: f"{text}->{tgt}")
    assert made == [Pair("Bonjour->en", "Bonjour", "en", "fr")]


@pytest.mark.fetch
def test_real_freedict_lexicon(tmp_path):
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("needs apt-get and dpkg-deb to fetch dict-freedict-eng-fra")
    got = subprocess.run(
        ["apt-get", "download", "dict-freedict-eng-fra"], cwd=tmp_path, capture_output=True
    )
    debs = list(tmp_path.glob("dict-freedict-eng-fra_*.deb"))
    if got.returncode or not debs:
        pytest.skip(f"apt-get download failed: {got.stderr.decode()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp_path / "x")], check=True)
    (index,) = (tmp_path / "x").rglob("freedict-eng-fra.index")
    lexicon = read_freedict(index)
    assert len(lexicon) > 5000 and lexicon["house"] == "maison"
