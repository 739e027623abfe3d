"""Length groups: every item lands in exactly one group, padded no shorter than itself; the cut
points are optimal; the item encoder gives the same vectors and gradients grouped or not."""

import itertools

import numpy as np
import pytest
import torch

from mlrec.config import load_config
from mlrec.models import length_groups as lg
from mlrec.models.recommender import build_recommender


def _mask(lengths, width):
    return torch.arange(width)[None] < torch.as_tensor(lengths)[:, None]


def _brute_force(lengths, max_groups, penalty):
    distinct = sorted(set(lengths))
    best = np.inf
    for k in range(1, max_groups + 1):
        for cuts in itertools.combinations(range(len(distinct) - 1), k - 1):
            ends = [*cuts, len(distinct) - 1]
            cost, prev = penalty * (k - 1), -1
            for end in ends:  # this group: the lengths distinct[prev + 1 .. end]
                members = set(distinct[prev + 1 : end + 1])
                cost += sum(n in members for n in lengths) * distinct[end]
                prev = end
            best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_groups_partition_the_rows_and_are_optimal(seed):
    gen = np.random.default_rng(seed)
    width = int(gen.integers(6, 20))
    lengths = gen.integers(1, width + 1, int(gen.integers(5, 40))).tolist()
    for max_groups in (1, 2, 3, 5):
        groups = lg.length_groups(_mask(lengths, width), max_groups)
        assert 1 <= len(groups) <= max_groups
        rows = torch.cat([r for r, _ in groups]).tolist()
        assert sorted(rows) == list(range(len(lengths)))
        assert all(max(lengths[i] for i in r.tolist()) == w for r, w in groups)
        penalty = lg.MIN_SAVING * len(lengths) * max(lengths)
        cost = sum(len(r) * w for r, w in groups) + penalty * (len(groups) - 1)
        assert cost == pytest.approx(_brute_force(lengths, max_groups, penalty))


def test_trailing_padding_only_is_cut():
    # a row with a gap (or left padding) keeps everything up to its last real token
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert lg.item_lengths(mask).tolist() == [3, 4, 1]
    assert lg.item_lengths(torch.zeros(2, 4, dtype=torch.bool)).tolist() == [0, 0]


def test_grouped_encoding_gives_the_same_vectors_and_gradients():
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            "model.hidden_size=32",
            "model.num_heads=2",
            "model.intermediate_size=64",
            "model.dropout=0.0",
        ],
    )
    encoder = build_recommender(cfg.model, vocab_size=300, pad_token_id=1).item_encoder
    lengths = [2, 3, 3, 9, 10, 16, 16, 16, 4, 5, 12, 1]
    mask = _mask(lengths, 16)
    ids = torch.where(mask, torch.randint(3, 300, mask.shape), 1)
    assert len(lg.length_groups(mask, 4)) > 1  # the case under test really groups

    results = {}
    for buckets in (0, 4):
        encoder.length_buckets = buckets
        encoder.zero_grad()
        vectors = encoder(ids, mask)
        (vectors * torch.arange(vectors.shape[1])).sum().backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        results[buckets] = (vectors.detach(), grads)
    torch.testing.assert_close(results[4][0], results[0][0], rtol=1e-5, atol=1e-5)
    assert results[4][1].keys() == results[0][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[4][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
    empty = encoder(ids[:0], mask[:0])  # no items: no groups to form
    assert empty.shape == (0, results[0][0].shape[1])
