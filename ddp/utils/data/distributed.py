"""``DistributedSampler``: each rank iterates over its own 1/N of a dataset (torch semantics)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

from ddp import distributed as dist
from ddp.random import Generator, permutation_array


class DistributedSampler:
    """Restrict data loading to a rank's share of the dataset, as ``torch``'s sampler does.

    The index list (shuffled or not) is padded by repeating its head until its length divides
    by ``num_replicas`` (or, with ``drop_last``, truncated to the largest multiple), then rank
    ``r`` takes every ``num_replicas``-th index starting at ``r``. So every rank gets
    ``len(sampler)`` indices and the ranks together cover the dataset.

    With ``shuffle=False`` the indices are exactly torch's. With ``shuffle=True`` the
    permutation comes from ddp's generator seeded with ``seed + epoch``: it is identical on
    every rank (which is what matters: the shares stay disjoint) but differs from torch's.
    Call :meth:`set_epoch` before each epoch, otherwise every epoch uses the same order.

    Args:
        dataset: anything with ``len()``.
        num_replicas: number of ranks (default: ``ddp.distributed.get_world_size()``).
        rank: this rank (default: ``ddp.distributed.get_rank()``).
        shuffle: permute the indices each epoch.
        seed: base seed of the permutation; must be the same on all ranks.
        drop_last: drop the tail instead of padding, so no sample is seen twice per epoch.

    Raises:
        ValueError: when ``rank`` is not in ``[0, num_replicas - 1]`` or ``num_replicas < 1``.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            if num_replicas is None:
                num_replicas = dist.get_world_size()
            if rank is None:
                rank = dist.get_rank()
        if num_replicas < 1:
            raise ValueError(f"Invalid num_replicas {num_replicas}, it should be >= 1")
        if rank >= num_replicas or rank < 0:
            raise ValueError(
                f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}] "
                f"for num_replicas={num_replicas}"
            )
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = drop_last
        n = len(dataset)
        if drop_last and n % num_replicas != 0:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.shuffle = shuffle
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = Generator().manual_seed(self.seed + self.epoch)
            indices = permutation_array(n, generator).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            padding = self.total_size - len(indices)
            if padding <= len(indices):
                indices += indices[:padding]
            else:
                indices += (indices * math.ceil(padding / len(indices)))[:padding]
        else:
            indices = indices[: self.total_size]
        assert len(indices) == self.total_size
        indices = indices[self.rank : self.total_size : self.num_replicas]
        assert len(indices) == self.num_samples
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; with ``shuffle=True`` each epoch then gets its own permutation."""
        self.epoch = epoch
