"""2 real processes x 2 DataLoader workers: disjoint, complete rank streams; exact resume."""

import json
import os
import subprocess
import sys

import pytest

from mlrec.data.layout import shard_files
from mlrec.data.loader import read_impressions

HERE = os.path.dirname(__file__)


@pytest.mark.multiproc
def test_two_ranks_two_workers_disjoint_complete_and_resumable(tiny_shards, tmp_path):
    batches, skip = 160, 37  # about two rounds of the tiny corpus on each slot
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            os.path.join(HERE, "rank_streams.py"),
            str(tiny_shards),
            str(tmp_path),
            "--batches",
            str(batches),
            "--skip",
            str(skip),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(HERE))
        ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = [{i for batch in r["full"] for i in batch} for r in ranks]
    assert all(len(r["full"]) == batches and r["steps"] == batches for r in ranks)
    assert not seen[0] & seen[1]  # disjoint
    trainable = {
        s["impression"]
        for s in read_impressions(shard_files(tiny_shards, "train"))
        if 0 in s["labels"] and 1 in s["labels"]
    }
    assert seen[0] | seen[1] == trainable  # together complete
    for r in ranks:
        assert r["resumed"] == r["full"][skip : skip + 5]  # exact mid-epoch resume
