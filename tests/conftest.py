"""Shared fixtures: offline Hugging Face, and one tiny corpus + shards built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach a model hub or dataset host.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "debug" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of the tiny debug corpus, shared read-only by the tests that only read them."""
    from mlrec.config import load_config
    from mlrec.data.shards import ShardInputs, build_shards

    root = tmp_path_factory.mktemp("tiny")
    cfg = load_config(TINY, [f"run_dir={root}"])
    build_shards(ShardInputs.of(cfg), progress=False)
    return cfg.shards_dir


def tiny_config(run_dir: Path, *overrides: str):
    from mlrec.config import load_config

    return load_config(TINY, [f"run_dir={run_dir}", *overrides])


def write_xmind_dev(corpus: Path, root: Path, languages) -> int:
    """The dev impressions of a generated corpus with plain MIND ids (no "@lang"), written once
    per language as xMIND lays dev sets out, root/dev/<lang>/behaviors.tsv; returns the rows."""
    plain = []
    for line in (corpus / "dev" / "behaviors.tsv").read_text().splitlines():
        cols = line.split("\t")
        cols[3] = " ".join(t.split("@")[0] for t in cols[3].split())
        cols[4] = " ".join(t.split("@")[0] + t[-2:] for t in cols[4].split())
        plain.append("\t".join(cols))
    for lang in languages:
        (root / "dev" / lang).mkdir(parents=True)
        (root / "dev" / lang / "behaviors.tsv").write_text("\n".join(plain) + "\n")
    return len(plain)
