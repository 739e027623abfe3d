"""The stages of an mlrec run, each callable on its own or chained by `quickstart`.

data -> shard -> train (evaluates at the end) -> export -> serve. Each stage reads what the
previous one wrote under the run directory (or the folders the config names) and says where it
wrote.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from mlrec import io, locks
from mlrec.config import Config, ConfigError, is_remote
from mlrec.data.corpus import behaviors_files, news_files, prepare_corpus
from mlrec.data.shards import build_shards
from mlrec.export.parity import ParityError

log = logging.getLogger(__name__)


def data(cfg: Config) -> Path:
    """Make the corpus available (generate the synthetic one) and list what it holds."""
    root = prepare_corpus(cfg.data, cfg.corpus_dir)
    for lang, paths in sorted(news_files(cfg.data, root).items()):
        log.info("news [%s]: %s", lang, ", ".join(str(p) for p in paths))
    for behaviors in behaviors_files(cfg.data, root):
        log.info(
            "%s behaviors: %s (plain ids: %s)", behaviors.split, behaviors.path, behaviors.language
        )
    return root


def shard(
    cfg: Config,
    *,
    workers: int = 1,
    part: tuple[int, int] | None = None,
    step: str = "all",
    inspect: bool = False,
) -> dict[str, Any] | None:
    """All of sharding, or one step of it for cluster jobs: `items` (the item table), one `part`
    (slice i of n of the units) or `merge` (the manifest); `inspect` only reads a finished one."""
    from mlrec.data import shards

    if inspect:
        from mlrec.data.inspect import describe

        remote_shards(cfg)
        print(describe(cfg.shards_dir))
        return None
    inputs = shards.ShardInputs.of(cfg)
    if part is not None:
        # the slices of one job write side by side (a shared lock); the same slice twice, or a
        # whole sharding run into the folder meanwhile, is refused
        index, count = part
        with (
            locks.locked(cfg.shards_dir, f"writing slices of {cfg.shards_dir}", shared=True),
            locks.locked(
                cfg.shards_dir,
                f"writing slice {index}/{count}",
                name=f".slice-{index}-of-{count}.lock",
            ),
        ):
            written = shards.shard_slice(inputs, *part)
        log.info("slice %d/%d: %d shard units in %s", *part, written, cfg.shards_dir)
        return None
    with locks.locked(cfg.shards_dir, f"writing shards into {cfg.shards_dir} ({step})"):
        if step == "items":
            shards.item_table(inputs, progress=True)
            return None
        if step == "merge":
            manifest = shards.merge_shards(inputs)
        else:
            manifest = build_shards(inputs, workers=workers)
        if cfg.data.item_features.teacher:
            item_features(cfg)
        if is_remote(cfg.data.shards_dir):  # written here, then sent, manifest last
            from mlrec.data.remote import upload

            upload(cfg.shards_dir, cfg.data.shards_dir)
    log.info("shards, item table and manifest: %s", cfg.data.shards_dir or cfg.shards_dir)
    return manifest


def item_features(cfg: Config) -> dict[str, Any]:
    """The teacher's vector of every item of the run's shards (data.item_features), written
    unless the shards hold those of the same teacher, options and texts already; returns the
    record (items/features.json)."""
    import json

    from mlrec.data import features
    from mlrec.data.layout import FEATURES_RECORD, item_index
    from mlrec.distill.teachers import load_teacher
    from mlrec.evaluation import baselines as base
    from mlrec.languages import parse_ref

    spec, shards_dir = cfg.data.item_features, cfg.shards_dir
    texts = base.item_texts(
        shards_dir, news_files(cfg.data, cfg.corpus_dir), cfg.data.text_fields, cfg.data.on_error
    )
    extra = _map_pairs(cfg)
    pairs_digest = io.texts_digest(t for pairs in extra.values() for pair in pairs for t in pair)
    record = shards_dir / FEATURES_RECORD
    if features.features_current(shards_dir, spec):
        made = json.loads(record.read_text())
        current = made.get("texts_sha256") == io.texts_digest(texts)
        if current and made.get("map_pairs_sha256", pairs_digest) == pairs_digest:
            log.info("item features: %s is current", record)
            return made
    teacher = load_teacher(spec.teacher, trust_remote_code=cfg.model.trust_remote_code)
    keys = [key for key, *_ in item_index(shards_dir)]
    # the dev impressions' items: their translations are what transfer is measured on
    excluded = {parse_ref(keys[r], "")[0] for r in _evaluated_rows(shards_dir, "")}

    def encode(batch: list[str]) -> np.ndarray:
        return base.frozen_item_vectors(
            batch, teacher.encode, shards_dir / "baselines", teacher.name
        )

    made = features.build_features(shards_dir, texts, encode, spec, excluded, teacher.name, extra)
    if extra:  # the record's digest of the pairs too: other pairs make other maps
        made["map_pairs_sha256"] = pairs_digest
        io.write_json(record, made, indent=2)
    return made


def _map_pairs(cfg: Config) -> dict[str, list[tuple[str, str]]]:
    """data.item_features.map_sources' training pairs, as language -> [(L text, map_to text)],
    for the languages of the item table ({} without map_sources)."""
    spec = cfg.data.item_features
    if not spec.map_sources:
        return {}
    from mlrec.data.layout import item_index
    from mlrec.data.pairs import map_pairs
    from mlrec.languages import parse_ref

    languages = sorted({parse_ref(key, "")[1] for key, *_ in item_index(cfg.shards_dir)})
    pairs = map_pairs(spec, cfg.data, [lang for lang in languages if lang != spec.map_to])
    out: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs.train:
        out.setdefault(pair.tgt_lang, []).append((pair.target, pair.source))
    return out


def remote_shards(cfg: Config) -> None:
    """A remote data.shards_dir's manifest, tokenizer and item table, mirrored locally before a
    stage reads them (the tars are read remotely; see mlrec.data.remote)."""
    if is_remote(cfg.data.shards_dir):
        from mlrec.data.remote import mirror

        mirror(cfg.data.shards_dir, cfg.shards_dir)


def train(cfg: Config) -> dict[str, Any]:
    """Train (resuming if configured), evaluate, and close the process group."""
    from mlrec.train.trainer import Trainer

    remote_shards(cfg)
    with closing(Trainer(cfg)) as trainer:
        trainer.baselines = baselines(cfg, cfg.shards_dir)
        return trainer.train()


def trained_model(cfg: Config, checkpoint: str | Path | None = None):
    """The recommender of a checkpoint of the run (the latest, a step number, or a folder) and
    its tokenizer: weights only, no optimizer, scheduler or accelerator (export and evaluation
    read, they do not train)."""
    from mlrec.data.layout import TOKENIZER_DIR, load_manifest
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.models.trained import load_trained, read_state, same_tokenizer
    from mlrec.runs import checkpoint_root, find_checkpoint

    path = find_checkpoint(checkpoint_root(cfg.run_dir), checkpoint)
    manifest = load_manifest(cfg.shards_dir)
    same_tokenizer(read_state(path), manifest, path, cfg.shards_dir)
    pad_id = manifest["tokenizer"]["pad_token_id"]
    tokenizer = load_tokenizer(cfg.shards_dir / TOKENIZER_DIR, cfg.model.trust_remote_code)
    log.info("model of %s", path)
    width = _feature_width(cfg)
    return load_trained(cfg, path, len(tokenizer), pad_id, width), tokenizer


def _feature_width(cfg: Config) -> int:
    """The width of the item features a teacher-feature item tower maps (0 for the text one)."""
    from mlrec.data.features import tower_features

    table = tower_features(cfg.model.item_tower, cfg.data.item_features, cfg.shards_dir)
    return 0 if table is None else int(table.shape[1])


def baselines(cfg: Config, shards_dir: Path) -> dict[str, Any]:
    """The configured baselines (eval.baselines) as scorers over the items of `shards_dir`:
    popularity counts the run's own training clicks, whatever dev data is scored."""
    from mlrec.data.corpus import news_files
    from mlrec.data.features import centre_by_language
    from mlrec.data.layout import item_index, shard_files
    from mlrec.data.loader import read_impressions
    from mlrec.evaluation import baselines as base
    from mlrec.evaluation.ranking import per_impression
    from mlrec.languages import parse_ref

    out: dict[str, Any] = {}
    if "teacher_features" in cfg.eval.baselines:
        from mlrec.data.features import load_features

        table = np.asarray(load_features(shards_dir, cfg.data.item_features), dtype=np.float32)
        fused = base.LateFusion(table, cfg.data.max_history, name="teacher features late fusion")
        out["teacher_features"] = per_impression(fused.scores)
    if "popularity" in cfg.eval.baselines:
        trained_on = base.Popularity.from_shards(cfg.shards_dir)
        rows = [parse_ref(key, "")[0] for key, *_ in item_index(shards_dir)]
        out["popularity"] = per_impression(base.Popularity(trained_on.clicks, rows).scores)
    head = "teacher_centred_head" in cfg.eval.baselines
    if head and Path(shards_dir) != Path(cfg.shards_dir):
        raise ConfigError(
            "eval.baselines: teacher_centred_head trains on the run's clicks over the run's own "
            "item table, so it scores the run's own dev sets only (not --data)"
        )
    if "teacher" in cfg.eval.baselines or head:
        from mlrec.distill.teachers import load_teacher

        teacher = load_teacher(cfg.eval.teacher, trust_remote_code=cfg.model.trust_remote_code)
        data, corpus = _data_of(cfg, shards_dir)
        files = news_files(data, corpus)
        texts = base.item_texts(shards_dir, files, data.text_fields, data.on_error)
        # only the items evaluation shows (and their reference-language versions; the training
        # clicks' items for the head): a catalog is mostly items no impression holds, and a
        # teacher such as mUSE encodes ~86/s
        rows = _evaluated_rows(shards_dir, cfg.eval.reference_language)
        train = list(read_impressions(shard_files(shards_dir, "train"))) if head else []
        rows = sorted(set(rows).union(*(imp["history"] + imp["candidates"] for imp in train)))
        if cfg.data.item_features.teacher == cfg.eval.teacher and Path(shards_dir) == Path(
            cfg.shards_dir
        ):
            # the item features encoded every row with this teacher: the same texts hit that
            # cache, where a subset would be encoded again
            rows = list(range(len(texts)))
        vectors = np.zeros((len(texts), teacher.dim), dtype=np.float32)
        vectors[rows] = base.frozen_item_vectors(
            [texts[r] for r in rows], teacher.encode, Path(shards_dir) / "baselines", teacher.name
        )
        if "teacher" in cfg.eval.baselines:
            fusion = base.LateFusion(vectors, cfg.data.max_history, name="teacher late fusion")
            out["teacher_late_fusion"] = per_impression(fusion.scores)
        if head:
            languages = [lang for _, lang, *_ in item_index(shards_dir)]
            centred = centre_by_language(vectors, languages, rows)
            fitted = base.CentredHead.fit(centred, train, cfg.data.max_history, seed=cfg.seed)
            out["teacher_centred_head"] = per_impression(fitted.scores)
    return out


def _evaluated_rows(shards_dir: Path, reference_language: str) -> list[int]:
    """Item-table rows of every dev impression's history and candidates, with their versions in
    the reference language when the transfer report is asked for."""
    from mlrec.data.layout import dev_splits, item_index, shard_files
    from mlrec.data.loader import read_impressions
    from mlrec.evaluation.transfer import Swapper

    rows: set[int] = set()
    for split in dev_splits(shards_dir):
        for imp in read_impressions(shard_files(shards_dir, split)):
            rows.update(imp["history"], imp["candidates"])
    if reference_language:
        swap = Swapper([key for key, *_ in item_index(shards_dir)], reference_language).swap
        rows |= {swap[r] for r in rows if swap[r] is not None}
    return sorted(rows)


def _data_of(cfg: Config, shards_dir: Path):
    """The data section and corpus folder an evaluation's shards were written from: the run's
    own, or those recorded in the other shards' manifest."""
    from mlrec.config import DataConfig, config_from_dict
    from mlrec.data.layout import MANIFEST, load_manifest

    if shards_dir == cfg.shards_dir:
        return cfg.data, cfg.corpus_dir
    recorded = {**cfg.to_dict(), "data": load_manifest(shards_dir)["config"]}
    other = config_from_dict(recorded, str(shards_dir / MANIFEST))
    data: DataConfig = other.data
    return data, other.corpus_dir


def _exported_model(
    cfg: Config, export: Path, checkpoint: str | None, data: Path | None, out: Path | None
):
    """(model, shards folder, output folder) to evaluate an export folder with."""
    from mlrec.data.layout import TOKENIZER_DIR
    from mlrec.data.tokenizer import load_tokenizer
    from mlrec.export.hf import load_export

    if checkpoint is not None:
        raise ConfigError("--checkpoint is for run directories; an export holds one model")
    if out is None:
        raise ConfigError(f"evaluating the export {export} needs --out DIR (it is not written to)")
    model, tokenizer, _ = load_export(export, cfg.model.trust_remote_code)
    shards_dir = cfg.shards_dir if data is None else data
    if data is not None and not (data / "manifest.json").is_file():
        raise ConfigError(f"--data {data}: an export is evaluated on a shards folder")
    if not (shards_dir / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{shards_dir} (the export's data.shards_dir) holds no shards: name some with --data"
        )
    if load_tokenizer(shards_dir / TOKENIZER_DIR).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"{shards_dir} was tokenised with another vocabulary than the export {export}'s"
        )
    return model, shards_dir, out


def evaluation_shards(cfg: Config, data: Path | None) -> Path:
    """The shards to evaluate on: the run's own, a shards folder, or the shards a config names
    (written first if needed, with the run's tokenizer so the model reads them as trained). The
    item table must come from the run's tokenizer: another one would number tokens otherwise."""
    from mlrec.config import load_config
    from mlrec.data.layout import MANIFEST, TOKENIZER_DIR, load_manifest
    from mlrec.data.shards import ShardInputs, build_shards

    if data is None:
        return cfg.shards_dir
    if (data / MANIFEST).is_file():
        shards_dir = data
    else:
        other = load_config(data, [f"model.tokenizer={cfg.shards_dir / TOKENIZER_DIR}"])
        build_shards(ShardInputs.of(other))
        shards_dir = other.shards_dir
    ours = load_manifest(cfg.shards_dir)["tokenizer"]["sha256"]
    theirs = load_manifest(shards_dir)["tokenizer"]["sha256"]
    if ours != theirs:
        raise ConfigError(
            f"--data {data}: its shards ({shards_dir}) were tokenised with another tokenizer "
            f"than the run's ({cfg.shards_dir / TOKENIZER_DIR}); shard it with "
            f"model.tokenizer={cfg.shards_dir / TOKENIZER_DIR}"
        )
    return shards_dir


def evaluate(
    cfg: Config,
    *,
    checkpoint: str | None = None,
    data: Path | None = None,
    out: Path | None = None,
    export: Path | None = None,
) -> dict[str, Any]:
    """A checkpoint of the run (latest by default), or an `export` folder, on its dev sets or
    on other dev data, with the baselines and the transfer report, written to `out` (default
    <run_dir>/eval; an export's folder is never written to, so `out` is required there)."""
    from mlrec.data.features import tower_features
    from mlrec.data.layout import load_manifest
    from mlrec.evaluation.ranking import evaluate as score
    from mlrec.train.trainer import build_accelerator, close_accelerator, lock_on_main

    remote_shards(cfg)

    if export is None and out is None and (checkpoint is not None or data is not None):
        # <run_dir>/eval holds the latest checkpoint on the run's own dev sets: another
        # evaluation written there would pass for it
        raise ConfigError(
            "--checkpoint or --data need --out DIR: <run_dir>/eval is the evaluation of the "
            "latest checkpoint on the run's dev sets"
        )
    if export is None:
        model, _ = trained_model(cfg, checkpoint)
        shards_dir = evaluation_shards(cfg, data)
    else:
        model, shards_dir, out = _exported_model(cfg, export, checkpoint, data, out)
    accelerator = build_accelerator(cfg)
    lock = None
    try:
        if out is None:  # <run_dir>/eval is the run's own: not while a training run writes there
            lock = lock_on_main(accelerator, Path(cfg.run_dir), "evaluating the run")
        return score(
            model.to(accelerator.device),
            accelerator,
            shards_dir,
            load_manifest(shards_dir)["tokenizer"]["pad_token_id"],
            batch_size=cfg.eval.batch_size,
            max_history=cfg.data.max_history,
            max_impressions=cfg.eval.max_impressions,
            out_dir=out or Path(cfg.run_dir) / "eval",
            baselines=baselines(cfg, shards_dir),
            reference_language=cfg.eval.reference_language,
            features=tower_features(cfg.model.item_tower, cfg.data.item_features, shards_dir),
        )
    finally:
        close_accelerator(accelerator)
        if lock is not None:
            locks.release(lock)


def export(cfg: Config) -> Path:
    """Hugging Face export, then (export.onnx) ONNX fp32/int8 models and their parity check,
    then (export.catalog_vectors) the catalog's item vectors for `mlrec serve`, their ANN index
    (export.index) and the popularity of the catalog's items for cold users (export.popularity)."""
    from mlrec.export.hf import export_model

    if cfg.model.item_tower != "text":
        # an exported model takes tokens; this one also needs each item's teacher vector, which
        # the service would have to compute with the teacher for every new item
        raise ConfigError(
            f"model.item_tower={cfg.model.item_tower}: export and serving take text-tower models "
            "only for now; evaluate this run with `mlrec evaluate`"
        )
    if cfg.export.triton and not cfg.export.onnx:
        raise ConfigError("export.triton needs export.onnx: Triton serves the ONNX models")
    remote_shards(cfg)
    if cfg.export.index.kind != "none" and not cfg.export.catalog_vectors:
        raise ConfigError("export.index needs export.catalog_vectors: it indexes those vectors")
    model, tokenizer = trained_model(cfg)
    final = cfg.export_dir
    # written beside export.dir and put in its place only when complete and checked: a crash,
    # kill or failed check leaves the earlier export as it was, never half of a new one
    with io.staged_folder(final) as out:
        export_model(model, tokenizer, cfg, out)
        if cfg.export.onnx:
            try:
                export_onnx_checked(cfg, out)
            except ParityError as err:
                rejected = final.with_name(f"{final.name}.rejected")
                io.replace_folder(out, rejected)
                raise ParityError(
                    f"{err}\nthe export was not published at {final}; it is kept for "
                    f"inspection in {rejected}"
                ) from None
        if cfg.export.catalog_vectors:
            from mlrec.serve.vectors import write_catalog_vectors

            # the backend `mlrec serve` runs with this config; without ONNX only torch can
            backend = cfg.serve.backend if cfg.export.onnx else "torch"
            vectors = write_catalog_vectors(out, cfg, backend)
            if cfg.export.index.kind != "none":
                from mlrec.serve.ann import export_index

                export_index(out, cfg, backend, vectors)
        _carry_updates(final, out)
        if cfg.export.popularity:
            from mlrec.serve.coldstart import write_popularity

            write_popularity(out, cfg.shards_dir, cfg.data.default_language)
    log.info("exported to %s (transformers.AutoModel.from_pretrained loads it)", final)
    return final


def _carry_updates(old: Path, new: Path) -> None:
    """Items added to the earlier export over HTTP stay in the catalog: its update log moves to
    the new export, whose service encodes their texts again with the new encoder."""
    from mlrec.export.hf import CATALOG_DIR
    from mlrec.serve.live import UPDATES_FILE

    log_file = old / CATALOG_DIR / UPDATES_FILE
    if log_file.is_file():
        shutil.copyfile(log_file, new / CATALOG_DIR / UPDATES_FILE)
        log.info("carried %s (catalog changes made while serving) into the new export", log_file)


def export_onnx_checked(cfg: Config, out: Path) -> None:
    """ONNX models of an export, the parity check (raises ParityError), optionally Triton."""
    try:
        from mlrec.export.onnx_models import export_onnx
    except ImportError as err:
        raise ConfigError(
            f"export.onnx needs ONNX Runtime ({err}), part of mlrec's base install: reinstall "
            "mlrec (pip install -e .), or set export.onnx=false"
        ) from err
    from mlrec.export.parity import check_parity

    trust = cfg.model.trust_remote_code
    export_onnx(out, trust)
    report = check_parity(out, cfg.shards_dir, cfg.export.parity_impressions, trust)
    if cfg.export.triton:
        from mlrec.export.triton import write_triton_repository

        dim = cfg.model.projection_dim or report["dim"]
        log.info("Triton model repository: %s", write_triton_repository(out, dim))


def align(cfg: Config) -> dict[str, Any]:
    """Cross-lingual alignment of an item encoder on parallel text (see mlrec.distill.align)."""
    from mlrec.distill.align import align as run_align

    return run_align(cfg)


def distill(cfg: Config, *, cache_teacher: bool = False) -> dict[str, Any] | None:
    """Train a student recommender on a teacher's outputs (see mlrec.distill.recommend), or
    with `cache_teacher` only write the teacher's outputs next to the shards (offline mode)."""
    from mlrec.distill import recommend

    remote_shards(cfg)
    if cache_teacher:
        recommend.cache_teacher(cfg)
        return None
    with closing(recommend.Distiller(cfg)) as trainer:
        return trainer.train()


def xling(cfg: Config) -> Path:
    """xMIND's transfer protocol: the corpus rewritten for ZS-/FS-XLT (mlrec.data.xling)."""
    from mlrec.data.xling import rewrite_corpus

    return rewrite_corpus(cfg.xling, cfg.data, cfg.corpus_dir, cfg.run_dir)


def serve(cfg: Config) -> None:
    """Answer ranking requests for the export in cfg.export_dir (see mlrec.serve.app)."""
    from mlrec.serve.app import serve as run_server

    run_server(cfg.export_dir, cfg)
