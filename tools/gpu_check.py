"""One short script for a GPU machine: the paths CPU tests cannot reach.

    python -m tools.gpu_check --out gpu-check.json [--steps 20]

Checks, each recorded in the JSON with its figures or its error:
- bf16 training of a base-sized encoder (XLM-R base shape: hidden 768, 12 layers) with LoRA:
  samples/s and model FLOPs utilisation (FLOPs counted with torch.utils.flop_counter, against the
  bf16 matmul peak measured on this GPU in the same run), and samples/s with peft's own LoRA
  forward and one padded block per batch (what fused LoRA and length groups give on a GPU);
- NCCL: a process group on the GPU and an all-reduce;
- DeepSpeed ZeRO-3 with LoRA through `accelerate launch --config_file
  launch/accelerate/deepspeed_zero3.yaml` on the real entry point, bf16, adapters saved whole.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BASE = [
    "model.hidden_size=768",
    "model.num_layers=12",
    "model.num_heads=12",
    "model.intermediate_size=3072",
    "model.user_heads=12",
    "data.max_item_tokens=64",
    "data.batch_size=64",
    "data.num_workers=4",
    "data.synthetic.num_news=3000",
    "data.synthetic.train_impressions=20000",
    "data.synthetic.dev_impressions=500",
    "model.vocab_size=16000",
]


def bf16_peak(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (time.perf_counter() - start)


def check_bf16_training(work: Path, steps: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from mlrec.config import load_config
    from mlrec.data.shards import ShardInputs, build_shards
    from mlrec.models.fused_lora import fuse_lora, unfuse_lora
    from mlrec.train.trainer import Trainer

    cfg = load_config(
        None,
        [f"run_dir={work / 'bf16'}", *BASE, "train.mixed_precision=bf16", f"train.steps={steps}"],
    )
    build_shards(ShardInputs.of(cfg), progress=False)
    trainer = Trainer(cfg)
    batches = trainer.batches()
    trainer.model.train()
    for _ in range(3):  # warm-up: kernels, allocator
        trainer.train_step(batches)
    torch.cuda.synchronize()
    times, rates = [], []
    for _ in range(steps):
        stats = trainer.train_step(batches)
        times.append(stats["step_time_s"])
        rates.append(stats["samples_per_s"])
    # the same steps with peft's own LoRA forward and one padded block per batch: what the fused
    # layers and length groups are worth on a GPU
    model = trainer.recommender
    unfuse_lora(model)
    model.item_encoder.length_buckets = 0
    ablation = [trainer.train_step(batches)["samples_per_s"] for _ in range(steps)]
    fuse_lora(model)
    model.item_encoder.length_buckets = cfg.model.length_buckets
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batches)
    peak = bf16_peak()
    achieved = counter.get_total_flops() / statistics.median(times)
    result = {
        "samples_per_s_median": statistics.median(rates),
        "without_fused_lora_and_groups_samples_per_s_median": statistics.median(ablation),
        "fused_and_groups_speedup": statistics.median(rates) / statistics.median(ablation),
        "step_time_s_median": statistics.median(times),
        "flops_per_step": counter.get_total_flops(),
        "achieved_flops_per_s": achieved,
        "bf16_matmul_peak_flops_per_s": peak,
        "mfu": achieved / peak,
        "max_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
        "loss_finite": bool(stats["loss"] == stats["loss"]),
    }
    trainer.close()
    return result


def check_nccl() -> dict:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("nccl", rank=0, world_size=1)
    x = torch.ones(1024, device="cuda")
    dist.all_reduce(x)
    ok = bool(x.sum().item() == 1024)
    dist.destroy_process_group()
    return {"backend": "nccl", "all_reduce_ok": ok}


def check_zero3_lora(work: Path) -> dict:
    run = work / "zero3"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "launch" / "accelerate" / "deepspeed_zero3.yaml"),
        "--num_processes",
        str(torch.cuda.device_count()),
        "-m",
        "mlrec",
        "train",
        "--config",
        str(REPO / "configs" / "debug" / "tiny.yaml"),
        f"run_dir={run}",
        "train.mixed_precision=bf16",
        "train.steps=20",
        "adapter.method=lora",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlrec.cli",
            "shard",
            "--config",
            str(REPO / "configs" / "debug" / "tiny.yaml"),
            f"run_dir={run}",
        ],
        check=True,
    )
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    from safetensors.torch import load_file

    adapter = run / "adapter" / "adapter_model.safetensors"
    sizes = [v.numel() for v in load_file(str(adapter)).values()] if adapter.exists() else []
    metrics = run / "eval" / "metrics.json"
    return {
        "returncode": out.returncode,
        "seconds": time.perf_counter() - start,
        "deepspeed_checkpoint": (run / "checkpoints" / "step-00000020" / "pytorch_model").is_dir(),
        "adapter_tensors": len(sizes),
        "adapter_min_numel": min(sizes) if sizes else 0,
        "auc": json.loads(metrics.read_text())["overall"]["auc"] if metrics.exists() else None,
        "stderr_tail": out.stderr[-2000:] if out.returncode else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script checks the GPU-only paths")
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    checks = {
        "nccl": check_nccl,
        "bf16_training_base": lambda: check_bf16_training(work, args.steps),
        "zero3_lora": lambda: check_zero3_lora(work),
    }
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception:  # record and go on: one failed path must not hide the others
            results[name] = {"error": traceback.format_exc()[-3000:]}
        args.out.write_text(json.dumps(results, indent=2))  # partial results survive a time-out
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
