"""Augmentation for alignment: code-switching with bilingual lexicons, and a back-translation hook.

Code-switching (Qin et al., 2020, CoSDA-ML) replaces a fraction of the source sentence's words by
their dictionary translation into the pair's target language; the student still regresses the
teacher's vector of the untouched source, so mixed sentences land where their meaning is.
Lexicons are freedict dictionaries in dictd format (`apt-get download dict-freedict-eng-fra`:
`freedict-eng-fra.index` + `.dict.dz`); an entry's first translation is used.

Back-translation is a hook: any callable `(text, src_lang, tgt_lang) -> text` can add synthetic
pairs with `back_translated`; mlrec ships no translator.
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from mlrec.config import ConfigError
from mlrec.data.parallel import Pair

# freedict names languages with ISO 639-3 codes; mlrec's corpora use 639-1
ISO3 = {
    "eng": "en", "fra": "fr", "deu": "de", "spa": "es", "ita": "it", "pol": "pl", "rus": "ru",
    "jpn": "ja", "nld": "nl", "por": "pt", "tur": "tr", "swe": "sv", "ces": "cs", "dan": "da",
    "fin": "fi", "hun": "hu", "ell": "el", "ukr": "uk", "ara": "ar", "zho": "zh", "kor": "ko",
}  # fmt: skip
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_WORD = re.compile(r"\w+", re.UNICODE)

Translator = Callable[[str, str, str], str]


def _b64(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def read_freedict(index: str | Path) -> dict[str, str]:
    """Single-word headword -> its first single translation, from a dictd .index + .dict.dz."""
    index = Path(index)
    data_file = index.with_suffix(".dict.dz")
    if not data_file.is_file():
        data_file = index.with_suffix(".dict")
    opener = gzip.open if data_file.suffix == ".dz" else open
    with opener(data_file, "rb") as handle:
        data = handle.read()
    lexicon: dict[str, str] = {}
    for line in index.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) != 3 or " " in cols[0] or cols[0].startswith("00database"):
            continue
        start, length = _b64(cols[1]), _b64(cols[2])
        lines = data[start : start + length].decode("utf-8", "replace").splitlines()[1:]
        for text in lines:
            first = re.sub(r"^\d+\.\s*", "", text).split(",")[0].strip()
            if first:
                lexicon.setdefault(cols[0].lower(), first)
                break
    return lexicon


def lexicon_languages(index: Path) -> tuple[str, str]:
    """`freedict-eng-fra.index` -> ("en", "fr")."""
    parts = index.name.split(".")[0].split("-")
    if len(parts) < 3:
        raise ConfigError(f"align.lexicons: {index} is not named freedict-<src>-<tgt>.index")
    return ISO3.get(parts[-2], parts[-2]), ISO3.get(parts[-1], parts[-1])


class CodeSwitcher:
    """Replaces each dictionary word of a source sentence with probability `fraction`."""

    def __init__(self, lexicons: dict[str, dict[str, str]], fraction: float, seed: int = 0):
        self.lexicons = lexicons
        self.fraction = fraction
        self.rng = random.Random(seed)

    @classmethod
    def from_paths(cls, paths: Iterable[str], fraction: float, seed: int = 0) -> CodeSwitcher:
        indexes: list[Path] = []
        for p in map(Path, paths):
            indexes += sorted(p.rglob("*.index")) if p.is_dir() else [p]
        if not indexes or not all(i.is_file() for i in indexes):
            raise ConfigError(
                "align.code_switch > 0 needs align.lexicons: freedict .index files or folders "
                "(apt-get download dict-freedict-eng-fra && dpkg-deb -x ...)"
            )
        lexicons: dict[str, dict[str, str]] = {}
        for index in indexes:
            _, tgt = lexicon_languages(index)
            lexicons.setdefault(tgt, {}).update(read_freedict(index))
        return cls(lexicons, fraction, seed)

    def __call__(self, text: str, tgt_lang: str) -> str:
        lexicon = self.lexicons.get(tgt_lang) or self.lexicons.get(tgt_lang.split("_")[0])
        if not lexicon:
            return text

        def swap(match: re.Match) -> str:
            word = match.group(0)
            found = lexicon.get(word.lower())
            return found if found and self.rng.random() < self.fraction else word

        return _WORD.sub(swap, text)


def back_translated(pairs: Iterable[Pair], translate: Translator) -> list[Pair]:
    """Synthetic pairs from a back-translation callable: the target translated back into the
    source language becomes a new source sentence paired with the same target."""
    return [
        Pair(translate(p.target, p.tgt_lang, p.src_lang), p.target, p.src_lang, p.tgt_lang)
        for p in pairs
    ]
