"""Locating (and, for the built-in corpus, generating) the MIND-format files a config names."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mlrec.config import Config, ConfigError

log = logging.getLogger(__name__)


def prepare_corpus(cfg: Config) -> Path:
    """Return the corpus folder, generating the synthetic corpus (or fetching and converting
    the Debian catalog) there on first use."""
    root = cfg.corpus_dir
    if cfg.data.source == "debian" and not (root / "corpus.json").is_file():
        from mlrec.data.debian import prepare_catalog

        prepare_catalog(cfg, root)
    if cfg.data.source == "synthetic" and not (root / "corpus.json").is_file():
        from mlrec.data.synthetic import generate_corpus

        log.info("generating the synthetic corpus in %s", root)
        # the section's fields are the generator's arguments, one for one
        generate_corpus(root, **dataclasses.asdict(cfg.data.synthetic), progress=True)
    return root


def news_files(cfg: Config) -> dict[str, list[Path]]:
    """Language -> news.tsv files, from `data.news` or the folder's layout."""
    root = cfg.corpus_dir
    if cfg.data.news:
        return {lang: [root / rel for rel in rels] for lang, rels in cfg.data.news.items()}
    per_language = sorted((root / "news").glob("*.tsv"))
    if per_language:
        return {p.stem: [p] for p in per_language}
    mind = [p for p in (root / "train/news.tsv", root / "dev/news.tsv") if p.is_file()]
    if mind:
        return {cfg.data.default_language: mind}
    raise ConfigError(
        f"data.news: no news files found in {root} (looked for news/<lang>.tsv and "
        "train/news.tsv); list them as data.news: {lang: [path, ...]}"
    )


def behaviors_file(cfg: Config, split: str) -> Path:
    rel = {"train": cfg.data.train_behaviors, "dev": cfg.data.dev_behaviors}[split]
    return cfg.corpus_dir / rel
