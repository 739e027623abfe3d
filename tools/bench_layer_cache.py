"""The frozen-layer cache against full-depth LoRA on a 12-layer decoder, in one run.

    python -m tools.bench_train --layer-cache --out FILE.json [--quick] [--set KEY=VALUE ...]

1. A random 12-layer Qwen2-style decoder (hidden 64) is first trained in full on the synthetic
   corpus for a few hundred steps and saved: the stand-in for a pretrained LLM, so that both arms
   start from a backbone that already reads the corpus' languages (from random weights, LoRA
   alone learns next to nothing and the AUC comparison would be one of two coin flips).
2. From that backbone, with fresh heads and the same seed (so the same batches):
   - full: LoRA r=8 on every projection of all 12 layers, every layer run every step;
   - cache: `model.layer_cache=2`, LoRA on the top 2 layers only, the bottom 10 computed once
     per item-table row into the memory-mapped cache (its build is timed on its own).
   The two take their steps alternately, in rounds, so that the shared machine's drift hits both
   alike; steps/s and samples/s are medians over rounds, and `layer_cache_speedup` is the median
   of the rounds' ratios.
3. After the same number of steps each is evaluated on the same dev impressions (the whole
   model: evaluation never reads the cache); `layer_cache_auc_delta` is cache minus full.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from mlrec.config import load_config
from mlrec.models.layer_cache import CACHE_DIR
from mlrec.train.trainer import Trainer

TOP_LAYERS = 2
DECODER = [
    "model.architecture=qwen2",
    # mean pooling: a random decoder's last (EOS) token carries little of the text until it has
    # learnt to attend to it, which a short pretraining does not get to (with last pooling the
    # pretraining loss was still at chance, 1.605, after 100 of 200 steps here); the cache works
    # the same for any pooling
    "model.pooling=mean",
    "model.hidden_size=64",
    "model.num_heads=4",
    "model.num_layers=12",
    "model.intermediate_size=192",
    "model.user_heads=4",
    "model.dropout=0.0",
    "data.max_item_tokens=16",
    "data.max_history=5",
    "data.batch_size=8",
    "data.num_workers=1",
]
SIZES = [
    "data.synthetic.num_news=800",
    "data.synthetic.train_impressions=6000",
    "data.synthetic.dev_impressions=600",
    "data.synthetic.num_users=800",
]


def pretrain(cfg_args: list[str], work: Path, steps: int) -> Path:
    """Full training of the random decoder; its backbone saved as a Hugging Face folder."""
    cfg = load_config(
        None,
        [
            *cfg_args,
            f"run_dir={work / 'pretrain'}",
            "adapter.method=full",
            f"train.steps={steps}",
            "train.lr=3e-3",
        ],
    )
    trainer = Trainer(cfg)
    try:
        trainer.model.train()
        batches = trainer.batches()
        start = time.perf_counter()
        for step in range(steps):
            loss = trainer.train_step(batches)["loss"]
            trainer.step += 1
            if step % 50 == 0 or step == steps - 1:
                print(f"pretrain step {step + 1}/{steps} loss {loss:.3f}", flush=True)
        print(f"pretrained in {time.perf_counter() - start:.0f} s", flush=True)
        out = work / "backbone"
        trainer.recommender.item_encoder.backbone.save_pretrained(str(out))
        trainer.tokenizer.save_pretrained(str(out))
    finally:
        trainer.close()
    return out


def run(args, common: list[str], work: Path) -> dict:
    """The benchmark of the module docstring; returns the JSON's figures."""
    from mlrec.data.shards import ShardInputs, build_shards

    rounds, steps, pre_steps = (4, 6, 60) if args.quick else (6, 10, 150)
    cfg_args = [*common, *DECODER, *SIZES, *args.set, f"data.shards_dir={work / 'shards'}"]
    cfg = load_config(None, [*cfg_args, f"run_dir={work}"])
    build_shards(ShardInputs.of(cfg), progress=False)
    backbone = pretrain(cfg_args, work, pre_steps)
    total = rounds * steps
    arm_args = [
        *cfg_args,
        f"model.name_or_path={backbone}",
        "adapter.modules_to_save=[]",
        f"train.steps={total}",
    ]
    start = time.perf_counter()
    full = Trainer(load_config(None, [*arm_args, f"run_dir={work / 'full'}"]))
    full_setup_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = Trainer(
        load_config(
            None, [*arm_args, f"run_dir={work / 'cache'}", f"model.layer_cache={TOP_LAYERS}"]
        )
    )
    cache_setup_s = time.perf_counter() - start  # the cache's build included
    arms = {"full": full, "cache": cached}
    streams = {name: t.batches() for name, t in arms.items()}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    losses: dict[str, list[float]] = {name: [] for name in arms}
    try:
        for trainer in arms.values():
            trainer.model.train()
        for r in range(rounds):
            for name, trainer in arms.items():
                begin = time.perf_counter()
                for _ in range(steps):
                    losses[name].append(trainer.train_step(streams[name])["loss"])
                    trainer.step += 1
                rates[name].append(steps / (time.perf_counter() - begin))
            print(
                f"round {r + 1}/{rounds}: full {rates['full'][-1]:.2f} steps/s, cache "
                f"{rates['cache'][-1]:.2f} steps/s",
                flush=True,
            )
        auc = {name: t.evaluate()["overall"]["auc"] for name, t in arms.items()}
    finally:
        for trainer in arms.values():
            trainer.close()
    by_round = [c / f for c, f in zip(rates["cache"], rates["full"], strict=True)]
    median = {name: statistics.median(v) for name, v in rates.items()}
    batch = cfg.data.batch_size
    cache_bytes = sum(p.stat().st_size for p in (work / "shards" / CACHE_DIR).iterdir())
    full_s, cache_s = total / median["full"], total / median["cache"]
    return {
        "layer_cache_quick": args.quick,
        "layer_cache_model": DECODER,
        "layer_cache_overrides": args.set,
        "layer_cache_top_layers": TOP_LAYERS,
        "layer_cache_pretrain_steps": pre_steps,
        "layer_cache_rounds": rounds,
        "layer_cache_steps_per_round": steps,
        "layer_cache_steps_per_arm": total,
        "layer_cache_batch_size": batch,
        "threads": torch.get_num_threads(),
        "full_steps_per_s": rates["full"],
        "cache_steps_per_s": rates["cache"],
        "full_steps_per_s_median": median["full"],
        "cache_steps_per_s_median": median["cache"],
        "full_samples_per_s_median": median["full"] * batch,
        "cache_samples_per_s_median": median["cache"] * batch,
        "layer_cache_speedup_by_round": by_round,
        "layer_cache_speedup": statistics.median(by_round),
        "layer_cache_speedup_of_medians": median["cache"] / median["full"],
        # Trainer construction: model loading, and for the cache arm the cache's build
        "full_setup_s": full_setup_s,
        "cache_setup_s": cache_setup_s,
        "layer_cache_bytes": cache_bytes,
        # set-up counted in: what these few steps gain overall, the one-time build included
        "layer_cache_speedup_with_build": (full_s + full_setup_s) / (cache_s + cache_setup_s),
        "full_dev_auc": auc["full"],
        "cache_dev_auc": auc["cache"],
        "layer_cache_auc_delta": auc["cache"] - auc["full"],
        "full_loss_first_last": [losses["full"][0], losses["full"][-1]],
        "cache_loss_first_last": [losses["cache"][0], losses["cache"][-1]],
    }
