"""DistributedSampler against torch's index lists (shuffle=False) and its own invariants."""

from __future__ import annotations

import pytest
from _helpers import torch_oracle

import ddp.distributed as dist
from ddp.utils.data.distributed import DistributedSampler

SIZES = [0, 1, 2, 5, 7, 10, 11, 16]


def _torch_indices(n, replicas, rank, drop_last):
    torch = torch_oracle()
    from torch.utils.data.distributed import DistributedSampler as TorchSampler

    sampler = TorchSampler(range(n), num_replicas=replicas, rank=rank, shuffle=False,
                           drop_last=drop_last)
    return list(sampler), len(sampler), torch


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("n", SIZES)
def test_matches_torch_without_shuffle(n, replicas, drop_last):
    for rank in range(replicas):
        expect, expect_len, _ = _torch_indices(n, replicas, rank, drop_last)
        sampler = DistributedSampler(range(n), num_replicas=replicas, rank=rank, shuffle=False,
                                     drop_last=drop_last)
        assert list(sampler) == expect
        assert len(sampler) == expect_len


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n", [7, 10, 13])
def test_shuffle_partitions_a_permutation_identically_on_all_ranks(n, drop_last):
    replicas = 3
    shares = [list(DistributedSampler(range(n), replicas, r, seed=5, drop_last=drop_last))
              for r in range(replicas)]
    again = [list(DistributedSampler(range(n), replicas, r, seed=5, drop_last=drop_last))
             for r in range(replicas)]
    assert shares == again  # same seed and epoch: same order on every rank and every run
    lengths = {len(s) for s in shares}
    assert len(lengths) == 1
    merged = [i for s in shares for i in s]
    if drop_last:
        assert len(set(merged)) == len(merged) == replicas * (n // replicas)
    else:
        assert set(merged) == set(range(n))
        assert len(merged) == replicas * -(-n // replicas)


def test_set_epoch_changes_the_permutation_and_is_reproducible():
    s = DistributedSampler(range(50), num_replicas=2, rank=0, seed=1)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert first != second
    assert sorted(first) != first  # actually shuffled
    s.set_epoch(0)
    assert list(s) == first
    other_seed = DistributedSampler(range(50), num_replicas=2, rank=0, seed=2)
    assert list(other_seed) != first


@pytest.mark.parametrize("rank", [-1, 3])
def test_rank_out_of_range_names_rank_and_replicas(rank):
    with pytest.raises(ValueError, match=rf"Invalid rank {rank}.*num_replicas=3"):
        DistributedSampler(range(10), num_replicas=3, rank=rank)


def test_defaults_come_from_the_process_group():
    def fn():
        s = DistributedSampler(range(10), shuffle=False)
        return s.num_replicas, s.rank, list(s)

    assert dist.spawn(fn, 3) == [(3, 0, [0, 3, 6, 9]), (3, 1, [1, 4, 7, 0]), (3, 2, [2, 5, 8, 1])]
