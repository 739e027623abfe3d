"""Training throughput of mlrec against a naive loop, and model FLOPs utilisation on CPU.

    python -m tools.bench_train --out FILE.json [--quick] [--set KEY=VALUE ...]
    python -m tools.bench_train --layer-cache --out FILE.json [--quick]   (tools.bench_layer_cache)

Both sides train the same recommender (an XLM-R-style encoder, hidden 256, 4 layers, LoRA r=8 on
attention and feed-forward layers, NRMS user encoder; 10 history items, 1 positive + 4 negatives,
batches of 16) from the same weights on the same synthetic corpus, in one process with 2 threads.
`--set` changes any config key after those (`--set model.hidden_size=384 model.num_heads=12
model.intermediate_size=1536` is multilingual MiniLM's layer shape); the JSON records the changes.

- mlrec: `Trainer.train_step` with the default settings, on batches streamed from the
  pre-tokenised shards: each distinct item of a batch encoded once, in up to 4 length groups
  padded to their own longest item (`model.length_buckets`) that go through each layer together
  (`mlrec.models.packed_encoder`), LoRA layers through their merged weight with the rank-r
  products stacked into the same matmuls (`adapter.fused`), torch's fused AdamW.
- naive: what a first version usually looks like, on a copy of the model with peft's own LoRA
  forward: a map-style Dataset over the behaviors TSV whose `__getitem__` tokenises the history
  and candidate titles with the Hugging Face fast tokenizer and pads them to max_length, a
  DataLoader batching those samples, and a training step that loops over the samples of the
  batch, encoding every history item and candidate separately; torch's default AdamW.
- ablation: mlrec's trainer with peft's LoRA forward and one padded block per batch, to show what
  the two settings are worth on their own (`mlrec_without_fused_and_groups_*`).

- bf16: mlrec and the naive loop again under bf16 autocast (what `train.mixed_precision=bf16`
  does on CPU through accelerate): `*_bf16_*` figures. On CPUs with AMX, bf16 matmuls run
  several times as fast as fp32. Both sides use mlrec's attention function, which runs CPU
  attention in fp32 (`mlrec.models.attention`): the naive loop is not held back by torch's slow
  bf16 attention kernel.

The five are timed alternately in rounds (the machine is shared and noisy) and medians reported.
FLOPs of mlrec steps (forward and backward) are counted with torch.utils.flop_counter and
compared with this machine's matmul peak (the best of two square sizes) in the same precision,
measured in every round right before and right after the mlrec arm (their mean is the round's
peak): `mfu_cpu` (fp32 training against the fp32 peak) and `mfu_cpu_bf16` (bf16 training
against the bf16 peak) are medians of the rounds' utilisations, and `mfu_cpu_vs_best_peak` the
median fp32 throughput against the best fp32 peak measured in any round.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils import flop_counter
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from mlrec.config import Config, ConfigError, load_config
from mlrec.data.corpus import behaviors_file, news_files
from mlrec.data.mind import read_behaviors, read_news
from mlrec.data.shards import ShardInputs, build_shards
from mlrec.models import fused_lora
from mlrec.models.fused_lora import fuse_lora, unfuse_lora
from mlrec.train.trainer import Trainer

MODEL = [
    "model.hidden_size=256",
    "model.num_layers=4",
    "model.num_heads=4",
    "model.intermediate_size=1024",
    "model.user_heads=4",
    "model.dropout=0.0",
    "data.max_item_tokens=32",
    "data.max_history=10",
    "data.batch_size=16",
    "data.num_workers=1",
]


class NaiveDataset(Dataset):
    """Reads the TSVs and tokenises per sample, padding to max_length (see module docstring)."""

    def __init__(self, cfg, tokenizer, negatives: int, seed: int) -> None:
        self.tok = tokenizer
        self.max_len = cfg.data.max_item_tokens
        self.max_history = cfg.data.max_history
        self.titles = {
            (item.nid, lang): item.title
            for lang, paths in news_files(cfg.data, cfg.corpus_dir).items()
            for path in paths
            for item in read_news(path, lang)
        }
        rng = np.random.default_rng(seed)
        self.samples = []
        train = behaviors_file(cfg.data, cfg.corpus_dir, "train")
        for _, imp in read_behaviors(train, cfg.data.default_language):
            negs = [c for c, y in zip(imp.candidates, imp.labels, strict=True) if not y]
            for pos in (c for c, y in zip(imp.candidates, imp.labels, strict=True) if y):
                if negs:
                    picks = [negs[i] for i in rng.integers(0, len(negs), negatives)]
                    self.samples.append((imp.history[-self.max_history :], [pos, *picks]))

    def __len__(self) -> int:
        return len(self.samples)

    def _encode(self, refs):
        enc = self.tok(
            [self.titles[r] for r in refs] or [""],
            padding="max_length",
            truncation=True,
            max_length=self.max_len,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def __getitem__(self, i):
        history, candidates = self.samples[i]
        return (*self._encode(history), *self._encode(candidates), len(history))


def naive_step(model, optimizer, batch) -> float:
    loss = 0.0
    for h_ids, h_mask, c_ids, c_mask, n_hist in batch:
        items = model.item_encoder(h_ids, h_mask.bool())
        mask = torch.zeros(1, len(items), dtype=torch.bool)
        mask[0, :n_hist] = True
        user = model.user_encoder(items[None], mask)
        scores = model.item_encoder(c_ids, c_mask.bool()) @ user[0]
        loss = loss + torch.nn.functional.cross_entropy(scores[None], torch.zeros(1).long())
    loss = loss / len(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def count_cpu_attention() -> None:
    """Have FlopCounterMode count the CPU attention kernels too.

    torch.utils.flop_counter has formulas for the GPU flash, efficient and cuDNN attention ops
    but not for the CPU flash kernel that scaled_dot_product_attention runs here, whose
    FLOPs it would otherwise leave out; the same formulas apply (its shapes are the same).
    """
    aten = torch.ops.aten
    forward = aten._scaled_dot_product_flash_attention_for_cpu
    backward = aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward in flop_counter.flop_registry or forward.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(forward)
    def _forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    @flop_counter.register_flop_formula(backward)
    def _backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def matmul_peak_flops(
    sizes=(1024, 2048), repeats: int = 5, dtype: torch.dtype = torch.float32
) -> dict[int, float]:
    """Best FLOP/s of an n x n matmul in `dtype`, per size."""
    peaks = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        peaks[n] = 2 * n**3 / min(times)
    return peaks


SIZES = [
    "data.synthetic.num_news=1500",
    "data.synthetic.train_impressions=4000",
    "data.synthetic.dev_impressions=200",
    "data.synthetic.num_users=800",
]
FLOP_COUNTED_STEPS = 6
# the arms whose MFU is measured, against the matmul peak in this precision
PEAK_DTYPES = {"mlrec": torch.float32, "mlrec_bf16": torch.bfloat16}


class Arms:
    """The five timed training steps of the module docstring (the naive ones on a copy of
    mlrec's model, made before any step); each step returns its own seconds."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.batch = cfg.data.batch_size
        self.trainer = Trainer(cfg)
        self.trainer.model.train()
        self.batches = self.trainer.batches()
        self.model = self.trainer.recommender
        self.naive_model = copy.deepcopy(self.model)
        unfuse_lora(self.naive_model)
        self.naive_model.item_encoder.length_buckets = 0
        naive_data = NaiveDataset(cfg, self.trainer.tokenizer, cfg.data.negatives, cfg.seed)
        naive_loader = DataLoader(
            naive_data,
            batch_size=cfg.data.batch_size,
            shuffle=True,
            num_workers=1,
            collate_fn=list,
            persistent_workers=True,
        )
        self.naive_batches = iter(naive_loader)
        self.naive_optimizer = torch.optim.AdamW(
            [p for p in self.naive_model.parameters() if p.requires_grad], lr=cfg.train.lr
        )
        self.steps = {
            "mlrec": self.mlrec,
            "naive": self.naive,
            "ablation": self.mlrec,
            "mlrec_bf16": in_bf16(self.mlrec),
            "naive_bf16": in_bf16(self.naive),
        }

    def use(self, name: str) -> None:
        """mlrec's default settings, or for the ablation peft's LoRA forward and no groups."""
        default = name != "ablation"
        (fuse_lora if default else unfuse_lora)(self.model)
        self.model.item_encoder.length_buckets = self.cfg.model.length_buckets if default else 0

    def mlrec(self) -> float:
        return self.trainer.train_step(self.batches)["step_time_s"]

    def naive(self) -> float:
        start = time.perf_counter()
        naive_step(self.naive_model, self.naive_optimizer, next(self.naive_batches))
        return time.perf_counter() - start

    def close(self) -> None:
        self.use("mlrec")
        self.trainer.close()


def in_bf16(step):
    """`step` under bf16 autocast, as `train.mixed_precision=bf16` runs it on CPU."""

    def bf16_step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step()

    return bf16_step


def timed(step, steps: int, batch: int) -> tuple[float, list[float]]:
    """samples/s over `steps` steps, and each step's own time"""
    times = []
    start = time.perf_counter()
    for _ in range(steps):
        times.append(step())
    return steps * batch / (time.perf_counter() - start), times


def bench_config(parser: argparse.ArgumentParser, args: argparse.Namespace, work: Path) -> Config:
    """The benchmark's model and corpus sizes in `work`, then `--set`; a usage error if invalid."""
    try:
        return load_config(None, [f"run_dir={work}", *MODEL, *SIZES, "train.steps=1000", *args.set])
    except ConfigError as err:
        parser.error(str(err))


def warm_up(arms: Arms) -> None:
    start = time.perf_counter()
    for _ in range(3):  # warm up every path (allocator, loader workers, oneDNN kernels)
        for name, step in arms.steps.items():
            arms.use(name)
            step()
    print(f"warm-up {time.perf_counter() - start:.1f} s", flush=True)


def flops_per_step(arms: Arms) -> float:
    """FLOPs of mlrec's steps, forward and backward, averaged over a few batches (they differ
    in distinct items and lengths); counting slows the steps, so they are not timed. The fused
    LoRA layers pad their stacked matrices with zero rows for speed: counted unpadded, so those
    multiplications by zero are not counted as work."""
    count_cpu_attention()
    fused_lora.ALIGN, align = 1, fused_lora.ALIGN
    with FlopCounterMode(display=False) as counter:
        for _ in range(FLOP_COUNTED_STEPS):
            arms.mlrec()
    fused_lora.ALIGN = align
    return counter.get_total_flops() / FLOP_COUNTED_STEPS


@dataclass
class Measurements:
    """Per arm, each round's samples/s and every step's seconds; per arm of PEAK_DTYPES, each
    round's matmul peaks (best size before and after; per size, their mean) and MFU."""

    rates: dict[str, list[float]]
    step_times: dict[str, list[float]]
    around: dict[str, list[tuple[float, float]]]
    peaks: dict[str, list[dict[int, float]]]
    mfus: dict[str, list[float]]


def measure_rounds(arms: Arms, rounds: int, steps: int, flops: float) -> Measurements:
    """The arms timed alternately, `rounds` times. The machine's speed drifts by tens of percent
    over minutes (shared cores), so the matmul peak is measured in every round too, right before
    and right after the mlrec arm in the same precision, and each round's utilisation uses the
    mean of the two."""
    m = Measurements(
        rates={name: [] for name in arms.steps},
        step_times={name: [] for name in arms.steps},
        around={name: [] for name in PEAK_DTYPES},
        peaks={name: [] for name in PEAK_DTYPES},
        mfus={name: [] for name in PEAK_DTYPES},
    )
    for _ in range(rounds):
        for name, step in arms.steps.items():
            arms.use(name)
            dtype = PEAK_DTYPES.get(name)
            before = matmul_peak_flops(dtype=dtype) if dtype else {}
            rate, times = timed(step, steps, arms.batch)
            m.rates[name].append(rate)
            m.step_times[name].extend(times)
            if dtype:
                after = matmul_peak_flops(dtype=dtype)
                m.around[name].append((max(before.values()), max(after.values())))
                m.peaks[name].append({n: (before[n] + after[n]) / 2 for n in before})
                peak = max(m.peaks[name][-1].values())
                m.mfus[name].append(flops * rate / arms.batch / peak)
        print(
            "round: "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in m.rates.items())
            + f" samples/s; MFU {m.mfus['mlrec'][-1]:.3f}, bf16 {m.mfus['mlrec_bf16'][-1]:.3f}",
            flush=True,
        )
    return m


def throughput_figures(m: Measurements) -> dict:
    """samples/s of every arm (each round and the median) and the speedups between arms."""
    rates = m.rates
    median = {name: statistics.median(values) for name, values in rates.items()}
    by_round = [a / b for a, b in zip(rates["mlrec"], rates["naive"], strict=True)]
    bf16_by_round = [a / b for a, b in zip(rates["mlrec_bf16"], rates["naive_bf16"], strict=True)]
    return {
        "mlrec_samples_per_s": rates["mlrec"],
        "naive_samples_per_s": rates["naive"],
        "mlrec_without_fused_and_groups_samples_per_s": rates["ablation"],
        "mlrec_bf16_samples_per_s": rates["mlrec_bf16"],
        "naive_bf16_samples_per_s": rates["naive_bf16"],
        "mlrec_samples_per_s_median": median["mlrec"],
        "naive_samples_per_s_median": median["naive"],
        "mlrec_without_fused_and_groups_samples_per_s_median": median["ablation"],
        "mlrec_bf16_samples_per_s_median": median["mlrec_bf16"],
        "naive_bf16_samples_per_s_median": median["naive_bf16"],
        "train_speedup_vs_naive": median["mlrec"] / median["naive"],
        # each round's own ratio: pairs runs seconds apart, so slow drift cancels
        "train_speedup_vs_naive_by_round": by_round,
        "train_speedup_vs_naive_median_of_rounds": statistics.median(by_round),
        "fused_and_groups_speedup": median["mlrec"] / median["ablation"],
        # both sides in bf16; and mlrec in bf16 against the naive loop in its faster precision
        "train_speedup_vs_naive_bf16": median["mlrec_bf16"] / median["naive_bf16"],
        "train_speedup_vs_naive_bf16_by_round": bf16_by_round,
        "train_speedup_vs_naive_bf16_median_of_rounds": statistics.median(bf16_by_round),
        "train_speedup_bf16_vs_faster_naive": median["mlrec_bf16"]
        / max(median["naive"], median["naive_bf16"]),
        "mlrec_bf16_speedup_over_fp32": median["mlrec_bf16"] / median["mlrec"],
        "mlrec_step_time_s_median": statistics.median(m.step_times["mlrec"]),
        "naive_step_time_s_median": statistics.median(m.step_times["naive"]),
    }


def flops_figures(m: Measurements, flops: float, batch: int) -> dict:
    """FLOPs per step, achieved FLOP/s, the matmul peaks measured and the MFUs."""
    best_peak = max(max(pair) for pair in m.around["mlrec"])
    achieved = flops * statistics.median(m.rates["mlrec"]) / batch
    return {
        "flops_per_step": flops,
        "flops_counted_over_steps": FLOP_COUNTED_STEPS,
        "achieved_flops_per_s": achieved,
        "matmul_peak_flops_per_s_by_round": [
            {str(n): v for n, v in p.items()} for p in m.peaks["mlrec"]
        ],
        # the best size's peak right before and right after the mlrec arm, each round
        "matmul_peak_before_after_by_round": m.around["mlrec"],
        "matmul_peak_flops_per_s_best": best_peak,
        "mfu_cpu_by_round": m.mfus["mlrec"],
        "mfu_cpu": statistics.median(m.mfus["mlrec"]),
        "mfu_cpu_vs_best_peak": achieved / best_peak,
        "bf16_matmul_peak_flops_per_s_by_round": [
            {str(n): v for n, v in p.items()} for p in m.peaks["mlrec_bf16"]
        ],
        "bf16_matmul_peak_before_after_by_round": m.around["mlrec_bf16"],
        "mfu_cpu_bf16_by_round": m.mfus["mlrec_bf16"],
        "mfu_cpu_bf16": statistics.median(m.mfus["mlrec_bf16"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 5 minutes")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides applied after the benchmark's model (e.g. model.hidden_size=384)",
    )
    parser.add_argument(
        "--layer-cache",
        action="store_true",
        help="instead: the frozen-layer cache against full-depth LoRA on a 12-layer decoder "
        "(tools.bench_layer_cache)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    if args.layer_cache:
        from tools.bench_layer_cache import run

        work = Path(tempfile.mkdtemp(prefix="bench-layer-cache-"))
        result = run(args, ["train.steps=1000"], work)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return
    rounds, steps = (8, 3) if args.quick else (16, 4)
    cfg = bench_config(parser, args, Path(tempfile.mkdtemp(prefix="bench-train-")))
    start = time.perf_counter()
    build_shards(ShardInputs.of(cfg), progress=False)
    print(f"shards built in {time.perf_counter() - start:.0f} s", flush=True)
    arms = Arms(cfg)
    warm_up(arms)
    flops = flops_per_step(arms)
    measured = measure_rounds(arms, rounds, steps, flops)
    arms.close()
    result = {
        "quick": args.quick,
        "model": MODEL,
        "overrides": args.set,
        "rounds": rounds,
        "steps_per_round": steps,
        "batch_size": arms.batch,
        "threads": torch.get_num_threads(),
        **throughput_figures(measured),
        **flops_figures(measured, flops, arms.batch),
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
