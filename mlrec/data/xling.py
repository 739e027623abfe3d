"""xMIND's cross-lingual transfer protocol, as a rewrite of a MIND-format corpus whose news ids
are shared across languages (news/<lang>.tsv, as xMIND and the synthetic corpus lay them out).

- ZS-XLT: every training reference is rewritten `nid@<source>`: the recommender is trained on
  one language only. The dev impressions are written once per language (source and each target)
  with their candidates in that language, so the existing per-language evaluation reports the
  source AUC and each target's AUC side by side; their difference is the transfer gap.
- FS-XLT (`xling.few_shot_fraction`): that fraction of news ids (a stable hash) is shown in a
  target language in training (the target picked by hash too).
- Bilingual consumption (`xling.history_target_fraction` < 1): in each dev copy only that
  fraction of the history (by hash) is in the target language, the rest in the source.

The rewritten corpus is written to `xling.out_dir`; train on it with
`data.source=mind data.dir=<out_dir>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlrec.config import ConfigError, DataConfig, XlingConfig
from mlrec.data.corpus import behaviors_file, news_files, prepare_corpus

log = logging.getLogger(__name__)

RECORD = "xling.json"


def out_dir(xling: XlingConfig, run_dir: str | Path) -> Path:
    return Path(xling.out_dir) if xling.out_dir else Path(run_dir) / "xling-corpus"


def _unit(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (the same in every run and process)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _rewrite_row(line: str, history_lang, candidate_lang, imp_id: int) -> str:
    cols = line.rstrip("\n").split("\t")
    history = [f"{nid}@{history_lang(nid)}" for nid in (t.split("@")[0] for t in cols[3].split())]
    impressions = []
    for token in cols[4].split():
        ref, _, label = token.rpartition("-")
        nid = ref.split("@")[0]
        impressions.append(f"{nid}@{candidate_lang(nid)}-{label}")
    return "\t".join([str(imp_id), cols[1], cols[2], " ".join(history), " ".join(impressions)])


def rewrite_corpus(
    xling: XlingConfig, data: DataConfig, corpus_dir: Path, run_dir: str | Path
) -> Path:
    """Write the protocol's corpus (see the module docstring) for the corpus of `data` in
    `corpus_dir`, into `xling.out_dir` (default: under `run_dir`); returns its folder."""
    prepare_corpus(data, corpus_dir)
    files = news_files(data, corpus_dir)
    src, targets = _protocol_languages(xling, sorted(files), corpus_dir)
    out = out_dir(xling, run_dir)
    _copy_news(files, [src, *targets], out / "news")
    train_language = _few_shot_language(src, targets, xling.few_shot_fraction)
    train, dev = behaviors_file(data, corpus_dir, "train"), behaviors_file(data, corpus_dir, "dev")
    counts: dict[str, Any] = {
        "train": _rewrite_train(train, out, train_language),
        "dev": _rewrite_dev(dev, out, src, [src, *targets], xling.history_target_fraction),
    }
    record = {
        "source_language": src,
        "target_languages": targets,
        "few_shot_fraction": xling.few_shot_fraction,
        "history_target_fraction": xling.history_target_fraction,
        "from": str(corpus_dir),
        "impressions": counts,
    }
    (out / RECORD).write_text(json.dumps(record, indent=2))
    log.info(
        "transfer corpus (train in %s, dev in %s): %s; train on it with data.source=mind "
        "data.dir=%s",
        src,
        ", ".join([src, *targets]),
        out,
        out,
    )
    return out


def _protocol_languages(
    xling: XlingConfig, languages: list[str], corpus_dir: Path
) -> tuple[str, list[str]]:
    """The source language and the targets (by default every other language of the corpus in
    `corpus_dir`); a ConfigError when the corpus has no news file for one of them."""
    src = xling.source_language
    targets = xling.target_languages or [lang for lang in languages if lang != src]
    missing = [lang for lang in [src, *targets] if lang not in languages]
    if missing:
        raise ConfigError(
            f"xling: no news/<lang>.tsv for {', '.join(missing)} in {corpus_dir} "
            f"(it has {', '.join(languages)})"
        )
    return src, targets


def _copy_news(files: dict[str, list[Path]], langs: list[str], news_dir: Path) -> None:
    """news/<lang>.tsv for each of `langs`: the rewrite changes references, not the news."""
    news_dir.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        paths = files[lang]
        if len(paths) != 1:
            raise ConfigError(f"xling needs one news file per language; {lang} has {len(paths)}")
        shutil.copy(paths[0], news_dir / f"{lang}.tsv")


def _few_shot_language(src: str, targets: list[str], fraction: float) -> Callable[[str], str]:
    """The language a news id is shown in during training: the source, or for `fraction` of the
    ids (FS-XLT) a target; both picked by a hash of the id, so it is the same in every row."""

    def language(nid: str) -> str:
        if _unit("fs", nid) < fraction:
            return targets[int(_unit("fs-lang", nid) * len(targets))]
        return src

    return language


def _rewrite_train(source: Path, out: Path, language: Callable[[str], str]) -> int:
    """train/behaviors.tsv: the rows of `source` with every reference in `language(nid)`;
    returns the rows written."""
    (out / "train").mkdir(exist_ok=True)
    written = 0
    with (
        open(source, encoding="utf-8") as rows,
        open(out / "train" / "behaviors.tsv", "w", encoding="utf-8", newline="\n") as fh,
    ):
        for line in rows:
            if line.strip():
                written += 1
                fh.write(_rewrite_row(line, language, language, written) + "\n")
    return written


def _rewrite_dev(
    source: Path, out: Path, src: str, langs: list[str], history_target_fraction: float
) -> dict[str, int]:
    """dev/behaviors.tsv: every impression of `source` once per language of `langs`, in that
    order, with its candidates in that language and `history_target_fraction` of its history (by
    a hash of row and id) too, the rest in `src`; returns the impressions written per language."""
    (out / "dev").mkdir(exist_ok=True)
    dev_text = source.read_text(encoding="utf-8")
    dev_rows = [line for line in dev_text.splitlines() if line.strip()]
    counts: dict[str, int] = {}
    imp_id = 0
    with open(out / "dev" / "behaviors.tsv", "w", encoding="utf-8", newline="\n") as fh:
        for lang in langs:
            for number, line in enumerate(dev_rows):

                def history(nid: str, lang=lang, number=number) -> str:
                    keep = _unit("bi", number, nid) < history_target_fraction
                    return lang if keep else src

                imp_id += 1
                fh.write(_rewrite_row(line, history, lambda _nid, lang=lang: lang, imp_id) + "\n")
            counts[lang] = len(dev_rows)
    return counts


def transfer_gaps(metrics: dict[str, Any], source: str, metric: str = "auc") -> dict[str, float]:
    """Target-language metric minus the source language's, per target (negative: a loss)."""
    by_lang = metrics["by_language"]
    base = by_lang[source][metric]
    return {lang: row[metric] - base for lang, row in sorted(by_lang.items()) if lang != source}
