"""Locating (and, for the built-in corpus, generating) the MIND-format files a config names.

Each function takes the data section and the corpus folder `root` (`Config.corpus_dir`:
`data.dir`, or `<run_dir>/corpus`), the paths in the section being relative to it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from mlrec.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

# dev set name -> folder, of a Debian corpus with bilingual users (data.debian.bilingual_from)
DEBIAN_DEV_SETS = {"monolingual": "dev", "bilingual": "dev-bilingual"}


def prepare_corpus(data: DataConfig, root: Path) -> Path:
    """Return the corpus folder `root`, generating the synthetic corpus (or fetching and
    converting the Debian catalog) there on first use."""
    if data.source == "debian":
        from mlrec.data.debian import check_catalog, prepare_catalog

        if (root / "corpus.json").is_file():
            check_catalog(data.debian, root)
        else:
            prepare_catalog(data.debian, root)
    if data.source == "synthetic" and not (root / "corpus.json").is_file():
        from mlrec.data.synthetic import generate_corpus

        log.info("generating the synthetic corpus in %s", root)
        # the section's fields are the generator's arguments, one for one
        generate_corpus(root, **dataclasses.asdict(data.synthetic), progress=True)
    return root


def news_files(data: DataConfig, root: Path) -> dict[str, list[Path]]:
    """Language -> news.tsv files, from `data.news` or the layout of the folder `root`."""
    if data.news:
        return _plain_files(
            {lang: [root / rel for rel in rels] for lang, rels in data.news.items()}
        )
    per_language = sorted((root / "news").glob("*.tsv"))
    if per_language:
        return _plain_files({p.stem: [p] for p in per_language})
    folders = sorted((root / "news").glob("*/news.tsv"))  # xMIND's own: news/<lang>/news.tsv
    if folders:
        return _plain_files({p.parent.name: [p] for p in folders})
    mind = [p for p in (root / "train/news.tsv", root / "dev/news.tsv") if p.exists()]
    if mind:
        return _plain_files({data.default_language: mind})
    raise ConfigError(
        f"data.news: no news files found in {root} (looked for news/<lang>.tsv, "
        "news/<lang>/news.tsv and train/news.tsv); list them as data.news: {lang: [path, ...]}"
    )


def _plain_files(files: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The news files as given, once each is known to be a readable file: a folder named like
    one (news/en.tsv/) would otherwise fail deep inside hashing with a traceback."""
    for paths in files.values():
        for path in paths:
            if path.exists() and not path.is_file():
                kind = "a folder" if path.is_dir() else "not a regular file"
                raise ConfigError(f"{path} is {kind}: a news file must be a TSV file")
    return files


def behaviors_file(data: DataConfig, root: Path, split: str) -> Path:
    rel = {"train": data.train_behaviors, "dev": data.dev_behaviors}[split]
    return root / rel


@dataclass(frozen=True)
class Behaviors:
    """One behaviors file to shard: its split name, path, and the language its plain ids mean."""

    # "train", "dev" (the one dev set) or "dev_<name>" (one of several; no dot, since
    # webdataset splits a member's key from its extension at the first dot)
    split: str
    path: Path
    language: str  # the language of item refs written without "@lang"


def behaviors_files(data: DataConfig, root: Path) -> list[Behaviors]:
    """The training file, then the dev sets in name order.

    Dev sets are the Debian converter's two (`DEBIAN_DEV_SETS`) when it writes bilingual
    users, else `data.dev_sets` (name -> file; a set named by one of the corpus' languages
    reads plain ids in that language, any other name in `data.default_language`), or else
    `data.dev_behaviors` if that file exists (plain ids in the default language, as MIND), or
    else xMIND's layout `dev/<lang>/behaviors.tsv`, one set per language of the news files,
    each read in its own language. A plain id is never read in a language the user did not name
    (by the set's name, its folder, or `data.default_language`).
    """
    files = [Behaviors("train", root / data.train_behaviors, data.default_language)]
    if data.source == "debian" and data.debian.bilingual_from:  # its converter's two dev sets
        return files + [
            Behaviors(f"dev_{name}", root / rel / "behaviors.tsv", data.default_language)
            for name, rel in DEBIAN_DEV_SETS.items()
        ]
    languages = set(news_files(data, root))
    if data.dev_sets:
        for name, rel in sorted(data.dev_sets.items()):
            lang = name if name in languages else data.default_language
            files.append(Behaviors(f"dev_{name}", root / rel, lang))
        return files
    if (root / data.dev_behaviors).is_file():
        return [*files, Behaviors("dev", root / data.dev_behaviors, data.default_language)]
    per_language = sorted(p for p in root.glob("dev/*/behaviors.tsv") if p.parent.name in languages)
    if not per_language:
        raise ConfigError(
            f"data.dev_behaviors: {root / data.dev_behaviors} not found, nor any "
            f"dev/<lang>/behaviors.tsv for the news languages ({', '.join(sorted(languages))}); "
            "name the dev files with data.dev_sets: {name: path}"
        )
    return files + [Behaviors(f"dev_{p.parent.name}", p, p.parent.name) for p in per_language]
