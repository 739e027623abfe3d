"""Parallel text for alignment: the corpus' own translations, gettext catalogs and TSV files,
split into training pairs and held-out pairs per target language.

The held-out split is made on the *source sentence* (a stable hash of it), not on the pair: a
gettext source sentence is translated into every language, and holding it out of all of them keeps
the retrieval test free of sentences the student was trained to map.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mlrec.config import AlignConfig, ConfigError, DataConfig, ItemFeaturesConfig
from mlrec.data.corpus import news_files, prepare_corpus
from mlrec.data.mind import read_news
from mlrec.data.parallel import Pair, mo_pairs, read_parallel_tsv
from mlrec.data.rows import RowLog


@dataclass
class ParallelSet:
    """Training and held-out pairs, each list holding pairs of one source language."""

    train: list[Pair]
    heldout: dict[str, list[Pair]]  # target language -> held-out pairs

    @property
    def languages(self) -> list[str]:
        return sorted({p.tgt_lang for p in self.train} | set(self.heldout))


def mo_language(path: Path) -> str:
    """`.../<lang>/LC_MESSAGES/x.mo` -> lang (VLC's `pt_BR` stays `pt_BR`), else the file stem."""
    if path.parent.name == "LC_MESSAGES":
        return path.parent.parent.name
    return path.stem


def corpus_pairs(data: DataConfig, corpus_dir: Path, src_lang: str) -> list[Pair]:
    """Titles of one news id in the source language and each other language of the corpus."""
    prepare_corpus(data, corpus_dir)
    quiet = RowLog("skip", warn=False)
    titles: dict[str, dict[str, str]] = defaultdict(dict)
    for lang, paths in news_files(data, corpus_dir).items():
        for path in paths:
            for item in read_news(path, lang, quiet):
                titles[lang].setdefault(item.nid, item.title)
    if src_lang not in titles:
        raise ConfigError(
            f"align.source_language: the corpus has no news in {src_lang!r} "
            f"(it has {', '.join(sorted(titles))})"
        )
    source = titles[src_lang]
    return [
        Pair(source[nid], text, src_lang, lang)
        for lang, items in sorted(titles.items())
        if lang != src_lang
        for nid, text in items.items()
        if nid in source
    ]


def source_pairs(align: AlignConfig, data: DataConfig, corpus_dir: Path, source: str) -> list[Pair]:
    """The pairs one entry of `align.sources` names ("corpus": the corpus of `data` in
    `corpus_dir`; `data.on_error` also applies to the rows of a .tsv)."""
    src_lang = align.source_language
    if source == "corpus":
        return corpus_pairs(data, corpus_dir, src_lang)
    path = Path(source)
    if path.suffix == ".tsv" and path.is_file():
        return list(read_parallel_tsv(path, RowLog(data.on_error)))
    catalogs = [path] if path.suffix == ".mo" and path.is_file() else sorted(path.rglob("*.mo"))
    if not path.exists() or not catalogs:
        raise ConfigError(
            f"align.sources: {source!r} is not 'corpus', a .tsv file, a .mo file or a folder "
            "holding .mo catalogs"
        )
    return [p for mo in catalogs for p in mo_pairs(mo, src_lang, mo_language(mo))]


def _word_count(text: str) -> int:
    return len(text.split())


def _heldout_rank(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_pairs(align: AlignConfig, data: DataConfig, corpus_dir: Path) -> ParallelSet:
    """Every source of `align.sources` (the corpus: `data`'s in `corpus_dir`), filtered,
    de-duplicated, split into train and held-out pairs."""
    wanted = set(align.languages)
    seen: set[tuple[str, str]] = set()
    by_lang: dict[str, list[Pair]] = defaultdict(list)
    for source in align.sources:
        for pair in source_pairs(align, data, corpus_dir, source):
            if pair.src_lang != align.source_language or pair.tgt_lang == pair.src_lang:
                continue
            if wanted and pair.tgt_lang not in wanted:
                continue
            if "%" in pair.source or _word_count(pair.source) < align.min_words:
                continue  # printf placeholders and menu labels are not sentences
            if pair.source == pair.target or (pair.tgt_lang, pair.source) in seen:
                continue
            seen.add((pair.tgt_lang, pair.source))
            by_lang[pair.tgt_lang].append(pair)
    if not by_lang:
        raise ConfigError(
            f"align.sources {align.sources} give no {align.source_language}->X pairs"
            + (f" for align.languages {sorted(wanted)}" if wanted else "")
        )
    # hash order is the same in every language, so multi-parallel sources (gettext) hold out
    # mostly the same sentences everywhere
    train: list[Pair] = []
    heldout: dict[str, list[Pair]] = {}
    for lang, pairs in sorted(by_lang.items()):
        pairs.sort(key=lambda p: _heldout_rank(p.source))
        heldout[lang] = pairs[: align.heldout_per_language]
        kept = pairs[align.heldout_per_language :]
        if align.max_pairs_per_language:
            kept = kept[: align.max_pairs_per_language]
        train.extend(kept)
    # a source sentence held out in one language is never trained in another
    held_anywhere = {p.source for pairs in heldout.values() for p in pairs}
    train = [p for p in train if p.source not in held_anywhere]
    return ParallelSet(train=train, heldout=heldout)


def fetch_vlc_catalogs(dest: str | Path) -> Path:
    """VLC's gettext catalogs (`apt-get download vlc-l10n`, 100+ languages) unpacked under
    `dest`; returns the `locale` folder. Reuses an earlier download."""
    dest = Path(dest)
    locale = dest / "usr" / "share" / "locale"
    if any(locale.glob("*/LC_MESSAGES/vlc.mo")):
        return locale
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise FileNotFoundError("fetching vlc-l10n needs apt-get and dpkg-deb")
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            ["apt-get", "download", "vlc-l10n"], cwd=tmp, capture_output=True, text=True
        )
        debs = sorted(Path(tmp).glob("vlc-l10n_*.deb"))
        if got.returncode or not debs:
            raise FileNotFoundError(f"apt-get download vlc-l10n failed: {got.stderr[-300:]}")
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], check=True)
    return locale


MAP_MIN_WORDS = 6  # gettext strings shorter than this are menu labels, not sentences


def map_pairs(spec: ItemFeaturesConfig, data: DataConfig, languages: list[str]) -> ParallelSet:
    """The pairs of data.item_features.map_sources (map_to -> each of `languages`), split as
    alignment's are: `train` for the feature maps, `heldout` (map_heldout per language) never
    fit on."""
    align = AlignConfig(
        sources=list(spec.map_sources),
        source_language=spec.map_to,
        languages=list(languages),
        min_words=MAP_MIN_WORDS,
        heldout_per_language=spec.map_heldout,
    )
    # the corpus is not a source here: the catalog's own translations are read from the shards
    if "corpus" in align.sources:
        raise ConfigError(
            "data.item_features.map_sources: 'corpus' is not needed (the catalog's translations "
            "are always used); name other parallel text"
        )
    return load_pairs(align, data, Path())

