"""Where a non-finite gradient came from: one tiny all-reduce and one log line.

``GradScaler`` (skipping a step) and ``ZeroRedundancyOptimizer.has_nonfinite_grad`` (its check
firing) fill a ``NonfiniteCensus``: every rank writes, into its own slots, the index of the
first parameter whose gradient holds inf/NaN (in the optimizer's ``param_groups`` order, the
same on every rank), the micro-batch where it appeared when known, and whether it saw it in
its local gradient (before averaging) or only in the averaged one. One SUM all-reduce of that
``1 + 3 * world`` int64 array replaces the found-inf flag's all-reduce, so every rank learns
where every rank saw it, and ``report`` writes one line.

The line goes to the logger ``ddp.nonfinite`` at WARNING, from rank 0 of the group only
(``logging.getLogger("ddp.nonfinite").setLevel(logging.ERROR)`` silences it; a handler
captures it).
"""

from __future__ import annotations

import logging

import numpy as np

from ddp.backend import get_array_module
from ddp.distributed.reduce_op import ReduceOp

logger = logging.getLogger("ddp.nonfinite")

LOCAL = 1  # seen in this rank's own gradient, before any averaging
REDUCED = 2  # seen in the averaged gradient (its source rank is unknown)


class NonfiniteCensus:
    """Per-rank slots: (first non-finite parameter index + 1, micro-batch + 1, source).

    Args:
        rank: this rank in the group the census is reduced over.
        world: the group's size.
    """

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.array = np.zeros(1 + 3 * world, dtype=np.int64)

    def found(self) -> bool:
        """Some rank found a non-finite gradient (the skip flag, after ``allreduce``)."""
        return bool(self.array[0])

    def mark(self, param_index: int | None, micro_batch: int | None, source: int) -> None:
        """Record this rank's first non-finite parameter (a later mark never overrides)."""
        if param_index is None:
            return
        self.array[0] = 1
        slots = self.array[1 + 3 * self.rank:4 + 3 * self.rank]
        if slots[0] == 0 or (slots[2] == REDUCED and source == LOCAL):
            slots[:] = (param_index + 1, 0 if micro_batch is None else micro_batch + 1, source)

    def regroup(self, rank: int, world: int) -> None:
        """Re-lay this (not yet reduced) census for a group where this process is ``rank`` of
        ``world`` (a sharded optimizer on a subgroup), keeping this rank's slots."""
        if (rank, world) == (self.rank, self.world):
            return
        mine = self.array[1 + 3 * self.rank:4 + 3 * self.rank].copy()
        self.rank, self.world = rank, world
        self.array = np.zeros(1 + 3 * world, dtype=np.int64)
        self.array[0] = int(mine[0] != 0)
        self.array[1 + 3 * rank:4 + 3 * rank] = mine

    def allreduce(self, group) -> None:
        """Collective: combine every rank's slots (one all-reduce of ``1 + 3 * world`` int64)."""
        if group is not None and self.world > 1:
            group.allreduce(self.array, ReduceOp.SUM)

    def entries(self) -> list[tuple[int, int, int | None, int]]:
        """``(rank, param index, micro-batch or None, source)`` of every rank that found one."""
        out = []
        for r in range(self.world):
            p, m, s = (int(v) for v in self.array[1 + 3 * r:4 + 3 * r])
            if p:
                out.append((r, p - 1, m - 1 if m else None, s))
        return out


def first_nonfinite(arrays) -> int | None:
    """Index of the first array holding inf or NaN, or None."""
    for i, a in enumerate(arrays):
        if a is not None and not bool(get_array_module(a).isfinite(a).all()):
            return i
    return None


def describe(census: NonfiniteCensus, name_of, micro_batches: int | None = None) -> str:
    """The place clause of the report: parameter, rank, micro-batch, ranks with the value.

    Args:
        name_of: ``param index -> str`` (a module path, or ``param_groups[g][i] shape (..)``).
        micro_batches: how many micro-batches the step had (``scale()`` calls), if known.
    """
    entries = census.entries()
    local = [e for e in entries if e[3] == LOCAL]
    chosen = local or entries
    rank, index, micro, _ = min(chosen, key=lambda e: (e[2] if e[2] is not None else 1 << 62,
                                                      e[0]))
    if micro is None and micro_batches == 1:
        micro = 0
    where = (f"micro-batch {micro}" if micro is not None
             else f"micro-batch unknown (one of {micro_batches})" if micro_batches
             else "micro-batch unknown")
    ranks = ",".join(str(e[0]) for e in chosen)
    if local:
        return (f"first in {name_of(index)} on rank {rank} at {where} "
                f"(ranks with non-finite local gradients: {ranks})")
    return (f"first in {name_of(index)} (seen after averaging on ranks {ranks}; the source "
            f"rank is unknown) at {where}")


def report(group_rank: int, line: str) -> None:
    """Log ``line`` from rank 0 of the group only (see the module doc)."""
    if group_rank == 0:
        logger.warning(line)


def param_label(param_groups, names: dict[int, str]):
    """``index -> name``: the registered module path, else ``param_groups[g][i] shape (..)``."""
    labels = []
    for g, group in enumerate(param_groups):
        for i, p in enumerate(group["params"]):
            labels.append(names.get(id(p)) or
                          f"param_groups[{g}][{i}] shape {tuple(p.shape)}")
    return lambda index: labels[index] if 0 <= index < len(labels) else f"parameter {index}"
