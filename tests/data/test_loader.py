import itertools
from collections import Counter

import numpy as np
import pytest

from mlrec.data.layout import shard_files
from mlrec.data.loader import read_impressions, round_sizes, train_loader


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


def _round(stream, worker, workers, rounds=1):
    """The impressions of a slot's first `rounds` rounds."""
    rng = np.random.default_rng(0)
    n = sum(stream.owned(worker, workers).values()) * rounds
    return list(itertools.islice(stream.impressions(worker, workers, rng), n))


def _slot_rounds(shards, ranks, rounds, alpha=1.0):
    """Per slot of ranks x 2 workers: its first `rounds` rounds of impression ids."""
    out = []
    for rank in range(ranks):
        stream = _loader(shards, rank=rank, world_size=ranks, language_alpha=alpha).dataset
        for worker in range(2):
            ids = [imp["impression"] for imp in _round(stream, worker, 2, rounds)]
            size = len(ids) // rounds
            out.append([ids[r * size : (r + 1) * size] for r in range(rounds)])
    return out


@pytest.mark.parametrize("ranks", [2, 4])
def test_each_round_the_slots_read_the_split_once(tiny_shards, ranks):
    """At alpha = 1 round r of every slot is epoch r: together the slots read each impression
    exactly once. (The tiny corpus has 6 shards per language: 4 slots split the shards, 8 split
    the samples.)"""
    everything = sorted(
        s["impression"] for s in read_impressions(shard_files(tiny_shards, "train"))
    )
    slots = _slot_rounds(tiny_shards, ranks, rounds=2)
    for r in range(2):
        assert sorted(i for slot in slots for i in slot[r]) == everything


def test_with_temperature_slots_stay_disjoint(tiny_shards):
    """alpha < 1 repeats small languages, but a slot only ever reads impressions it owns."""
    everything = {s["impression"] for s in read_impressions(shard_files(tiny_shards, "train"))}
    seen = [set().union(*rounds) for rounds in _slot_rounds(tiny_shards, 2, 4, alpha=0.5)]
    assert sum(map(len, seen)) == len(everything)
    assert set().union(*seen) == everything


def test_round_sizes_follow_the_temperature():
    owned = {"en": 900, "de": 90, "ja": 10}
    assert round_sizes(owned, 1.0) == owned
    uniform = round_sizes(owned, 0.0)
    assert sum(uniform.values()) == 1000 and max(uniform.values()) - min(uniform.values()) <= 1
    half = round_sizes(owned, 0.5)
    expected = {k: 1000 * v**0.5 / sum(x**0.5 for x in owned.values()) for k, v in owned.items()}
    assert all(abs(half[k] - expected[k]) < 1 for k in owned)
    assert half["ja"] > 10 * 4  # the small language is up-sampled about sixfold


def test_small_languages_are_upsampled_in_the_stream(tiny_shards):
    stream = _loader(tiny_shards, language_alpha=0.0).dataset
    langs = Counter(imp["lang"] for imp in _round(stream, 0, 1))
    assert max(langs.values()) - min(langs.values()) <= 1  # uniform over languages
    natural = Counter(imp["lang"] for imp in _round(_loader(tiny_shards).dataset, 0, 1))
    assert max(natural.values()) > 2 * min(natural.values())  # the corpus itself is skewed
