"""Zero-shot cross-lingual transfer on a real translated catalog, against the strong baselines.

    python -m tools.bench_xling_real --out FILE.json [--quick] [--ablation] [--work DIR]

Debian's hand-translated package descriptions (`data.source: debian`, fetched with apt-get as
root) as a catalog, metapackages as baskets (`configs/debian-transfer.yaml`): training sessions
in English only; dev sessions in every language on metapackages held out whole, whose items no
training session shows (`heldout_items`), 10 per basket and language; and bilingual dev users
(history in English, candidates in the target language: xMIND's mixed setting) as a second dev
set. Two protocols, each trained and evaluated in full:
  - `hard`: each click's negatives come from its own section (`negatives: same-section`), so a
    category alone cannot rule them out: the headline;
  - `easy`: negatives from sections no basket member has (the catalog's default).

Every route of ROUTES is trained on the same shards and scored on every dev impression (no
sample), beside click popularity, the frozen mUSE teacher with late fusion and the centred
teacher with a linear head trained on the English clicks, all on the same impressions. Each
impression in another language is scored again with its items in English: the zero-shot loss
(target minus English, on the same impressions).

Translation retrieval on an independent pool: 400 of VLC's gettext sentences per language
(`apt-get download vlc-l10n`, the held-out part of the split `data.item_features.map_sources`
would use), X -> en, mUSE's raw vectors against the features made by the shards' transform.
`--ablation` adds the switches of `ablations`, each trained and scored like the hard protocol.

The JSON holds, per protocol, dev set and language, for every scorer: auc, ndcg@10, zs_loss,
`se` (the paired standard error of its AUC difference against teacher_late_fusion), `se_by_user`
(the same, cluster-robust with each basket as a cluster: a basket's sessions are not
independent) and `diff`; `results` is the hard protocol's monolingual dev set, `bilingual` its
bilingual one; `routes` says what each route is and what its training cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "debian-transfer.yaml"
# mUSE's 16 training languages (ar de en es fr it ja ko nl pl pt ru th tr zh zh-TW) that the
# catalog has, in its codes; da, sk, uk, cs, fi, sv, hu, vi are languages mUSE was not trained on
TEACHER_LANGUAGES = ["de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt_BR", "ru", "zh_CN"]
BASELINES = ("popularity", "teacher_late_fusion", "teacher_centred_head", "teacher_features")
# the teacher's vectors in the shards: centred per language, mapped onto English per language
# (least squares pulled towards the identity, the pull chosen on held-out pairs, fit on the
# catalog's parallel rows outside every dev impression); teacher_features scores them as they
# are (late fusion, no training)
FEATURES = [
    "data.item_features.teacher=muse",
    "data.item_features.map=linear",
    "data.item_features.map_to=en",
]
# route -> (what it is, its overrides)
ROUTES: dict[str, tuple[str, list[str]]] = {
    "text": ("the text encoder trained on the clicks (the default route before this one)", []),
    "teacher_tower": (
        "teacher-feature item tower: the mapped teacher vectors x (I + D), D trained on the "
        "English clicks at lr 5e-5 (at 2e-4 and 2e-3 it lost to the untrained features), mean "
        "user, no text encoder (configs/debian-xling-recommended.yaml)",
        [
            "model.item_tower=teacher",
            "adapter.method=frozen",
            "model.user_encoder=mean",
            "train.lr=5e-5",
        ],
    ),
}
RECOMMENDED = "teacher_tower"
GETTEXT_POOL = 400  # gettext sentences per language in the independent retrieval pool

log = logging.getLogger("bench_xling_real")


def _config(work: Path, protocol: str, route: str, extra: list[str]):
    from mlrec.config import load_config

    return load_config(
        CONFIG,
        [
            f"run_dir={work / protocol / route}",
            f"data.dir={work / protocol / 'corpus'}",
            f"data.shards_dir={work / protocol / 'shards'}",
            *FEATURES,
            *extra,
        ],
    )


def ablations(locale: Path) -> dict[str, tuple[str, list[str]]]:
    """`--ablation`: switches tried on the hard protocol with the recommended route, each a
    protocol of its own (other sessions or other features mean other shards)."""
    return {
        "hard-related": (
            "4,600 more English training baskets: package neighbourhoods "
            "(data.debian.related_sessions=1)",
            ["data.debian.related_sessions=1"],
        ),
        "hard-gettext-maps": (
            "the feature maps also fit on VLC's gettext sentences (data.item_features."
            "map_sources), minus the retrieval pool",
            [
                f"data.item_features.map_sources=[{locale}]",
                f"data.item_features.map_heldout={GETTEXT_POOL}",
            ],
        ),
    }


def run_protocol(
    work: Path, protocol: str, common: list[str], routes: list[str], reuse: Path | None = None
) -> dict:
    """Convert, shard (with the item features) and train + evaluate every route (`reuse`:
    another protocol's folder whose cached teacher vectors to start from)."""
    from mlrec import pipeline

    if reuse is not None and not (work / protocol / "shards" / "baselines").exists():
        shutil.copytree(reuse / "shards" / "baselines", work / protocol / "shards" / "baselines")
    start = time.perf_counter()
    cfg = _config(work, protocol, routes[0], common)
    pipeline.data(cfg)
    pipeline.shard(cfg)
    prepared = time.perf_counter() - start
    runs: dict[str, Any] = {}
    for i, route in enumerate(routes):
        # the baselines score the same impressions whatever the route: all of them once, and
        # late fusion (what the paired differences are against) every time
        baselines = list(BASELINES) if i == 0 else ["teacher_late_fusion"]
        names = ", ".join("teacher" if b == "teacher_late_fusion" else b for b in baselines)
        cfg = _config(
            work, protocol, route, [*common, *ROUTES[route][1], f"eval.baselines=[{names}]"]
        )
        began = time.perf_counter()
        metrics = pipeline.train(cfg)
        runs[route] = {"seconds": time.perf_counter() - began, "metrics": metrics}
        log.info("%s/%s: overall AUC %.4f", protocol, route, metrics["overall"]["auc"])
    corpus = json.loads((cfg.corpus_dir / "corpus.json").read_text())
    features = json.loads((cfg.shards_dir / "items" / "features.json").read_text())
    return {
        "sessions": corpus["sessions"],
        "prepare_seconds": prepared,
        "feature_maps": features["maps"],
        "sets": {
            name: results(runs, name, routes) for name in runs[routes[0]]["metrics"]["dev_sets"]
        },
        "route_seconds": {route: runs[route]["seconds"] for route in routes},
        "runs": {route: run["metrics"] for route, run in runs.items()},
    }


def gettext_retrieval(
    work: Path, shards_dir: Path, per_language: int, extra: list[str] = ()
) -> dict[str, Any]:
    """Translation retrieval on a pool that shares no text with the features' maps (fit on the
    catalog's own translations): VLC's gettext sentences (6+ words), English -> each catalog
    language, `per_language` sentences chosen by a hash of the English message id (the same
    ones in every language). Top-1 among the pool's English sentences, with mUSE's raw vectors
    and with the features made by the shards' transform (centre + map)."""
    from dataclasses import replace

    from mlrec.config import DataConfig
    from mlrec.data.features import FeatureTransform
    from mlrec.data.pairs import fetch_vlc_catalogs, map_pairs
    from mlrec.distill.teachers import load_teacher
    from mlrec.evaluation.baselines import frozen_item_vectors
    from mlrec.evaluation.retrieval import top1

    cfg = _config(work, "hard", RECOMMENDED, list(extra))  # extra: the features' options
    transform = FeatureTransform.load(shards_dir, cfg.data.item_features)
    try:
        locale = fetch_vlc_catalogs(work / "vlc")
    except (FileNotFoundError, OSError) as err:
        return {"skipped": f"vlc-l10n could not be fetched: {err}"}
    languages = sorted(lang for lang in transform.means if lang != "en")
    # the held-out part of the split the maps use when map_sources names these catalogs
    spec = replace(cfg.data.item_features, map_sources=[str(locale)], map_heldout=per_language)
    pool = map_pairs(spec, DataConfig(), languages).heldout
    teacher = load_teacher("muse")
    texts = sorted(
        {text for pairs in pool.values() for p in pairs for text in (p.source, p.target)}
    )
    encoded = frozen_item_vectors(texts, teacher.encode, work / "vlc-cache", teacher.name)
    vectors = dict(zip(texts, encoded, strict=True))
    out: dict[str, Any] = {}
    for lang, pairs in sorted(pool.items()):
        src = np.stack([vectors[p.target] for p in pairs])  # the translation, into English
        dst = np.stack([vectors[p.source] for p in pairs])
        out[lang] = {
            "pool": len(pairs),
            "teacher_top1": top1(src, dst),
            "features_top1": top1(transform(src, lang), transform(dst, "en")),
        }
        out[lang]["features_vs_teacher"] = out[lang]["features_top1"] / out[lang]["teacher_top1"]
    return {"data": "vlc-l10n gettext, sentences of 6+ words, X -> en", "languages": out}


def results(runs: dict[str, Any], dev_set: str, routes: list[str]) -> dict[str, Any]:
    """Language -> scorer -> the figures the issue asks for, on one dev set."""
    first = runs[routes[0]]["metrics"]["dev_sets"][dev_set]
    tables = {name: (first["baselines"][name], first) for name in BASELINES}
    for route in routes:
        mine = runs[route]["metrics"]["dev_sets"][dev_set]
        tables[route] = (mine, mine)
    out: dict[str, dict[str, Any]] = {}
    for lang in [*first["by_language"], "overall"]:
        out[lang] = {}
        for name, (table, metrics) in tables.items():
            row = table["overall"] if lang == "overall" else table["by_language"].get(lang, {})
            if "auc" not in row:
                continue
            scorer = "model" if name in routes else name
            gap = metrics["transfer"].get(scorer, {}).get(lang, {}).get("gap", {}).get("auc")
            versus = metrics["paired"].get(scorer, {}).get(lang, {})
            against = name == metrics["paired"]["against"]
            out[lang][name] = {
                "auc": row["auc"],
                "ndcg@10": row["ndcg@10"],
                "impressions": row["scored"],
                "zs_loss": 0.0 if lang == "en" else gap,
                "diff": 0.0 if against else versus.get("diff"),
                "se": 0.0 if against else versus.get("se"),
                "se_by_user": 0.0 if against else versus.get("se_by_user"),
                "users": versus.get("users"),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--quick", action="store_true", help="hard protocol only, 100 steps")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument(
        "--ablation", action="store_true", help="also the switches of `ablations` (hard only)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    steps = 100 if args.quick else 300
    routes = list(ROUTES)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-xling-real-") as tmp:
        work = args.work or Path(tmp)
        common = [f"train.steps={steps}", "train.overwrite=true"]
        protocols = {"hard": run_protocol(work, "hard", common, routes)}
        # the other protocols read the lists the first fetched, and the teacher's vectors it
        # encoded: the item table is the same (only the sessions differ), and the cache is
        # keyed by teacher and texts, so it is reused only if that holds
        lists = work / "hard" / "corpus" / "apt-lists" / "lists"
        others = [*common, f"data.debian.lists_dir={lists}"]
        if not args.quick:
            easy = [*others, "data.debian.negatives=other-sections"]
            protocols["easy"] = run_protocol(work, "easy", easy, routes, reuse=work / "hard")
        retrieval = gettext_retrieval(work, work / "hard" / "shards", GETTEXT_POOL)
        if args.ablation:
            locale = work / "vlc" / "usr" / "share" / "locale"  # gettext_retrieval fetched it
            for name, (_, extra) in ablations(locale).items():
                protocols[name] = run_protocol(
                    work, name, [*others, *extra], [RECOMMENDED], reuse=work / "hard"
                )
                if name == "hard-gettext-maps":  # the same pool, with maps that saw the rest
                    protocols[name]["gettext_retrieval"] = gettext_retrieval(
                        work, work / name / "shards", GETTEXT_POOL, extra
                    )
    hard = protocols["hard"]["sets"]
    out = {
        "recommended": RECOMMENDED,
        "teacher": "muse",
        "teacher_languages": TEACHER_LANGUAGES,
        "steps": steps,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "routes": {name: about for name, (about, _) in ROUTES.items()},
        "ablations": {name: about for name, (about, _) in ablations(Path("vlc")).items()}
        if args.ablation
        else {},
        "results": hard["monolingual"],
        "bilingual": hard["bilingual"],
        "protocols": protocols,
        "gettext_retrieval": retrieval,
    }
    args.out.write_text(json.dumps(out, indent=2))
    head = hard["monolingual"]["overall"]
    print(json.dumps({name: head[name]["auc"] for name in head}, indent=2))


if __name__ == "__main__":
    main()
