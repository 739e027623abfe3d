import itertools

import torch

from mlrec.data.loader import train_loader


def _loader(shards, **kw):
    args = dict(batch_size=8, negatives=4, max_history=10, seed=3, num_workers=0)
    args.update(kw)
    return train_loader(shards, **args)


def _signature(batch):
    """What the model would see: item tokens per candidate and history position."""
    items = batch["item_ids"]
    cands = items[batch["candidates"]]
    hist = items[batch["history"]] * batch["history_mask"][..., None]
    return cands.tolist(), hist.tolist()


def test_batch_layout(tiny_shards):
    batch = next(iter(_loader(tiny_shards)))
    b = len(batch["labels"])
    assert b == 8
    assert batch["candidates"].shape == (b, 5)  # the positive and K=4 negatives
    assert batch["history"].shape == batch["history_mask"].shape
    assert batch["history"].shape[1] <= 10
    # each distinct item appears once in the batch's item rows
    rows = [tuple(r) for r in batch["item_ids"].tolist()]
    assert len(rows) == len(set(rows))
    # dynamic padding: the longest item fills the width exactly
    assert batch["item_mask"].sum(1).max() == batch["item_ids"].shape[1]
    assert (batch["labels"] == 0).all()


def test_same_seed_same_stream_other_seed_other_stream(tiny_shards):
    first = [_signature(b) for b in itertools.islice(_loader(tiny_shards), 5)]
    again = [_signature(b) for b in itertools.islice(_loader(tiny_shards), 5)]
    other = [_signature(b) for b in itertools.islice(_loader(tiny_shards, seed=4), 5)]
    assert first == again
    assert first != other


def test_skip_resumes_exactly_with_workers(tiny_shards):
    """Batches n.. of a resumed loader equal batches n.. of an uninterrupted one (2 workers)."""
    full = [_signature(b) for b in itertools.islice(_loader(tiny_shards, num_workers=2), 9)]
    resumed = _loader(tiny_shards, num_workers=2, skip_batches=5)
    tail = [_signature(b) for b in itertools.islice(resumed, 4)]
    assert tail == full[5:]


def test_ranks_read_disjoint_shards(tiny_shards):
    seen = []
    for rank in range(2):
        stream = _loader(tiny_shards, rank=rank, world_size=2).dataset
        seen.append({p for p in stream.paths[rank::2]})
        batch = next(iter(_loader(tiny_shards, rank=rank, world_size=2)))
        assert torch.is_tensor(batch["item_ids"])
    assert not seen[0] & seen[1]
