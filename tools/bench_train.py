"""Training throughput of mlrec against a naive loop, and model FLOPs utilisation on CPU.

    python tools/bench_train.py --out bench-train.json [--quick] [--set KEY=VALUE ...]

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
from pathlib import Path

import numpy as np
import torch
from torch.utils import flop_counter
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from mlrec.config import ConfigError, load_config
from mlrec.data.corpus import behaviors_file, news_files
from mlrec.data.mind import read_behaviors, read_news
from mlrec.data.shards import build_shards
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
            for lang, paths in news_files(cfg).items()
            for path in paths
            for item in read_news(path, lang)
        }
        rng = np.random.default_rng(seed)
        self.samples = []
        for _, imp in read_behaviors(behaviors_file(cfg, "train"), cfg.data.default_language):
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
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    rounds, steps = (8, 3) if args.quick else (16, 4)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    sizes = [
        "data.synthetic.num_news=1500",
        "data.synthetic.train_impressions=4000",
        "data.synthetic.dev_impressions=200",
        "data.synthetic.num_users=800",
    ]
    try:
        cfg = load_config(None, [f"run_dir={work}", *MODEL, *sizes, "train.steps=1000", *args.set])
    except ConfigError as err:
        parser.error(str(err))
    start = time.perf_counter()
    build_shards(cfg, progress=False)
    print(f"shards built in {time.perf_counter() - start:.0f} s", flush=True)
    trainer = Trainer(cfg)
    trainer.model.train()
    batches = trainer.batches()
    model = trainer.recommender
    naive_model = copy.deepcopy(model)
    unfuse_lora(naive_model)
    naive_model.item_encoder.length_buckets = 0
    naive_data = NaiveDataset(cfg, trainer.tokenizer, cfg.data.negatives, cfg.seed)
    naive_loader = DataLoader(
        naive_data,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        num_workers=1,
        collate_fn=list,
        persistent_workers=True,
    )
    naive_batches = iter(naive_loader)
    naive_optimizer = torch.optim.AdamW(
        [p for p in naive_model.parameters() if p.requires_grad], lr=cfg.train.lr
    )
    batch = cfg.data.batch_size

    def mlrec_settings(default: bool) -> None:
        (fuse_lora if default else unfuse_lora)(model)
        model.item_encoder.length_buckets = cfg.model.length_buckets if default else 0

    def timed(step) -> tuple[float, list[float]]:
        """samples/s over `steps` steps, and each step's own time"""
        times = []
        start = time.perf_counter()
        for _ in range(steps):
            times.append(step())
        return steps * batch / (time.perf_counter() - start), times

    def naive() -> float:
        start = time.perf_counter()
        naive_step(naive_model, naive_optimizer, next(naive_batches))
        return time.perf_counter() - start

    def mlrec() -> float:
        return trainer.train_step(batches)["step_time_s"]

    def in_bf16(step):
        def bf16_step() -> float:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return step()

        return bf16_step

    arms = {
        "mlrec": mlrec,
        "naive": naive,
        "ablation": mlrec,
        "mlrec_bf16": in_bf16(mlrec),
        "naive_bf16": in_bf16(naive),
    }
    start = time.perf_counter()
    for _ in range(3):  # warm up every path (allocator, loader workers, oneDNN kernels)
        for name, step in arms.items():
            mlrec_settings(name != "ablation")
            step()
    print(f"warm-up {time.perf_counter() - start:.1f} s", flush=True)

    # FLOPs of mlrec's steps, forward and backward, averaged over a few batches (they differ in
    # distinct items and lengths); counting slows the steps, so they are not timed. The fused
    # LoRA layers pad their stacked matrices with zero rows for speed: counted unpadded, so
    # those multiplications by zero are not counted as work.
    counted = 6
    count_cpu_attention()
    fused_lora.ALIGN, align = 1, fused_lora.ALIGN
    with FlopCounterMode(display=False) as counter:
        for _ in range(counted):
            mlrec()
    fused_lora.ALIGN = align
    flops_per_step = counter.get_total_flops() / counted

    # The machine's speed drifts by tens of percent over minutes (shared cores), so the matmul
    # peak is measured in every round too, right before and right after the mlrec arm in the
    # same precision, and each round's utilisation uses the mean of the two.
    peak_dtypes = {"mlrec": torch.float32, "mlrec_bf16": torch.bfloat16}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    step_times: dict[str, list[float]] = {name: [] for name in arms}
    around: dict[str, list[tuple[float, float]]] = {name: [] for name in peak_dtypes}
    peaks: dict[str, list[dict[int, float]]] = {name: [] for name in peak_dtypes}
    mfus: dict[str, list[float]] = {name: [] for name in peak_dtypes}
    for _ in range(rounds):
        for name, step in arms.items():
            mlrec_settings(name != "ablation")
            dtype = peak_dtypes.get(name)
            before = matmul_peak_flops(dtype=dtype) if dtype else {}
            rate, times = timed(step)
            rates[name].append(rate)
            step_times[name].extend(times)
            if dtype:
                after = matmul_peak_flops(dtype=dtype)
                around[name].append((max(before.values()), max(after.values())))
                peaks[name].append({n: (before[n] + after[n]) / 2 for n in before})
                mfus[name].append(flops_per_step * rate / batch / max(peaks[name][-1].values()))
        print(
            "round: "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
            + f" samples/s; MFU {mfus['mlrec'][-1]:.3f}, bf16 {mfus['mlrec_bf16'][-1]:.3f}",
            flush=True,
        )
    mlrec_settings(True)
    trainer.close()
    median = {name: statistics.median(values) for name, values in rates.items()}
    best_peak = max(max(pair) for pair in around["mlrec"])
    achieved = flops_per_step * median["mlrec"] / batch
    by_round = [m / n for m, n in zip(rates["mlrec"], rates["naive"], strict=True)]
    bf16_by_round = [m / n for m, n in zip(rates["mlrec_bf16"], rates["naive_bf16"], strict=True)]

    result = {
        "quick": args.quick,
        "model": MODEL,
        "overrides": args.set,
        "rounds": rounds,
        "steps_per_round": steps,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
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
        "mlrec_step_time_s_median": statistics.median(step_times["mlrec"]),
        "naive_step_time_s_median": statistics.median(step_times["naive"]),
        "flops_per_step": flops_per_step,
        "flops_counted_over_steps": counted,
        "achieved_flops_per_s": achieved,
        "matmul_peak_flops_per_s_by_round": [
            {str(n): v for n, v in p.items()} for p in peaks["mlrec"]
        ],
        # the best size's peak right before and right after the mlrec arm, each round
        "matmul_peak_before_after_by_round": around["mlrec"],
        "matmul_peak_flops_per_s_best": best_peak,
        "mfu_cpu_by_round": mfus["mlrec"],
        "mfu_cpu": statistics.median(mfus["mlrec"]),
        "mfu_cpu_vs_best_peak": achieved / best_peak,
        "bf16_matmul_peak_flops_per_s_by_round": [
            {str(n): v for n, v in p.items()} for p in peaks["mlrec_bf16"]
        ],
        "bf16_matmul_peak_before_after_by_round": around["mlrec_bf16"],
        "mfu_cpu_bf16_by_round": mfus["mlrec_bf16"],
        "mfu_cpu_bf16": statistics.median(mfus["mlrec_bf16"]),
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
