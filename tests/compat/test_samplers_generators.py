"""Samplers draw lazily; ``Generator`` objects drive samplers, loaders, splits and factories.

Semantics as torch's (same seed, same result; a generator's stream advances), not its numbers.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

import ddp
from ddp.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
    random_split,
)


def test_replacement_sampler_with_huge_num_samples_draws_lazily():
    sampler = RandomSampler(range(10), replacement=True, num_samples=10**10,
                            generator=ddp.Generator().manual_seed(0))
    assert len(sampler) == 10**10
    tracemalloc.start()
    try:
        first = list(itertools.islice(iter(sampler), 1000))
        batches = list(itertools.islice(BatchSampler(sampler, 64, False)._index_batches(), 5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak} bytes: the epoch was materialised"
    assert len(first) == 1000 and all(0 <= i < 10 for i in first)
    assert [len(b) for b in batches] == [64] * 5
    again = RandomSampler(range(10), replacement=True, num_samples=10**10,
                          generator=ddp.Generator().manual_seed(0))
    assert list(itertools.islice(iter(again), 1000)) == first  # same seed, same draws
    loader = DataLoader(TensorDataset(ddp.arange(10)), sampler=again, batch_size=8)
    xb, = next(iter(loader))
    assert xb.shape == (8,)


@pytest.mark.parametrize("replacement, num_samples", [(True, 70_001), (False, 70_001),
                                                      (False, None), (True, 5)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_equal_iteration_across_chunks(replacement, num_samples, drop_last):
    def make():
        return RandomSampler(range(30_000), replacement=replacement, num_samples=num_samples,
                             generator=ddp.Generator().manual_seed(4))

    fast = [b.tolist() for b in BatchSampler(make(), 1000, drop_last)._index_batches()]
    slow = list(BatchSampler(list(make()), 1000, drop_last))
    assert fast == slow
    assert len(fast) == len(BatchSampler(make(), 1000, drop_last))
    if not replacement and num_samples is None:  # one permutation
        assert sorted(itertools.chain.from_iterable(fast)) == list(range(30_000))


def test_sequential_sampler_chunks_cover_the_dataset():
    sampler = SequentialSampler(range(200_003))
    batches = list(BatchSampler(sampler, 4096, False)._index_batches())
    assert np.concatenate(batches).tolist() == list(range(200_003))


def test_generators_make_loaders_splits_and_factories_reproducible():
    data = TensorDataset(ddp.arange(100))

    def order(seed):
        loader = DataLoader(data, batch_size=10, shuffle=True,
                            generator=ddp.Generator().manual_seed(seed))
        return [xb.tolist() for xb, in loader]

    assert order(3) == order(3) and order(3) != order(4)
    g = ddp.Generator().manual_seed(5)
    epoch1, epoch2 = list(RandomSampler(range(50), generator=g)), list(RandomSampler(
        range(50), generator=g))
    assert epoch1 != epoch2 and sorted(epoch1) == list(range(50))  # the stream advances

    def split(seed):
        parts = random_split(range(10), [0.5, 0.3, 0.2],
                             generator=ddp.Generator().manual_seed(seed))
        return [list(p) for p in parts]

    assert split(1) == split(1) and [len(p) for p in split(1)] == [5, 3, 2]
    with pytest.warns(UserWarning, match="Length of split at index 2 is 0"):
        assert [len(p) for p in random_split(range(3), [0.5, 0.5, 0.0])] == [2, 1, 0]
    assert sorted(sum(split(1), [])) == list(range(10))
    g1, g2 = ddp.Generator().manual_seed(7), ddp.Generator().manual_seed(7)
    assert ddp.randn(3, 4, generator=g1).tolist() == ddp.randn(3, 4, generator=g2).tolist()
    assert ddp.randperm(20, generator=g1).tolist() == ddp.randperm(20, generator=g2).tolist()
    assert ddp.rand(5, generator=g1).tolist() == ddp.rand(5, generator=g2).tolist()
    assert (ddp.randint(0, 9, (6,), generator=g1).tolist()
            == ddp.randint(0, 9, (6,), generator=g2).tolist())
    assert sorted(ddp.randperm(20, generator=g1).tolist()) == list(range(20))
    assert ddp.Generator().device == ddp.device("cpu")
    assert ddp.Generator(device="cuda").device == ddp.device("cuda")
    # a generator does not touch the default one
    ddp.manual_seed(0)
    expected = ddp.randn(3).tolist()
    ddp.manual_seed(0)
    ddp.randn(3, generator=ddp.Generator().manual_seed(1))
    assert ddp.randn(3).tolist() == expected


@pytest.mark.parametrize("lib", ["ddp", "torch"])
def test_weighted_random_sampler_contract(lib):
    from _helpers import torch_oracle

    if lib == "ddp":
        W, G = WeightedRandomSampler, ddp.Generator
    else:
        torch = torch_oracle()
        W, G = torch.utils.data.WeightedRandomSampler, torch.Generator
    weights = [0.0, 1.0, 3.0, 0.0]
    draws = list(W(weights, 20_000, generator=G().manual_seed(0)))
    counts = np.bincount(draws, minlength=4)
    assert counts[0] == counts[3] == 0
    assert abs(counts[2] / counts[1] - 3.0) < 0.3
    assert list(W(weights, 50, generator=G().manual_seed(2))) == list(
        W(weights, 50, generator=G().manual_seed(2)))
    assert sorted(W(weights, 2, replacement=False)) == [1, 2]
    assert sorted(W([1.0, 0.0, 0.0], 2, replacement=False))[0] == 0
    assert len(W(weights, 7)) == 7
    with pytest.raises(ValueError, match="num_samples should be a positive integer value"):
        W(weights, 0)
    with pytest.raises(ValueError, match="weights should be a 1d sequence"):
        W([[1.0, 2.0]], 2)
    with pytest.raises(RuntimeError, match="encountering probability entry < 0"):
        list(W([-1.0, 2.0], 2))
    with pytest.raises(RuntimeError, match="sum of probabilities <= 0"):
        list(W([0.0, 0.0], 2))
    with pytest.raises(RuntimeError, match="cannot sample n_sample > prob_dist.size"):
        list(W([1.0, 2.0], 3, replacement=False))


def test_weighted_sampler_batches_lazily_and_equal_iteration():
    def make():
        return WeightedRandomSampler(np.arange(1, 11).tolist(), 10**9,
                                     generator=ddp.Generator().manual_seed(1))

    fast = list(itertools.islice(BatchSampler(make(), 100, False)._index_batches(), 3))
    slow = list(itertools.islice(BatchSampler(make(), 100, False), 3))
    assert [b.tolist() for b in fast] == slow
