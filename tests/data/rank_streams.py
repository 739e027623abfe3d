"""Run under torchrun by test_rank_streams.py: record the impressions each rank's loader yields.

Every step all-reduces a tensor, as DDP does, so a rank that ran out of batches would hang the
other; a second loader resumed at `--skip` must continue the first one exactly.
"""

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.distributed as dist

from mlrec.data.loader import train_loader

parser = argparse.ArgumentParser()
parser.add_argument("shards")
parser.add_argument("out")
parser.add_argument("--batches", type=int)
parser.add_argument("--skip", type=int)
args = parser.parse_args()

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()


def loader(skip):
    return train_loader(
        args.shards,
        batch_size=16,
        negatives=4,
        max_history=10,
        seed=3,
        num_workers=2,
        rank=rank,
        world_size=world,
        skip_batches=skip,
    )


steps = torch.zeros(1)
full = []
for batch in itertools.islice(loader(0), args.batches):
    full.append(batch["impressions"])
    steps += 1
    dist.all_reduce(steps)
    steps /= world
resumed = [b["impressions"] for b in itertools.islice(loader(args.skip), 5)]
Path(args.out, f"rank{rank}.json").write_text(
    json.dumps({"full": full, "resumed": resumed, "steps": steps.item()})
)
dist.barrier()
dist.destroy_process_group()
