"""bfloat16 collectives, shared by the threads tests and the MPI tests.

Each rank r contributes x_r = bfloat16(r + 1 + k / 256) (exact in bfloat16); sums are checked
against the float64 sum rounded once per pairwise addition, within bfloat16's half-ulp (2**-8
relative) per addition, since the order of additions is the backend's.
"""

from __future__ import annotations

import numpy as np

import ddp
import ddp.distributed as dist

BF16 = ddp.bfloat16.np_dtype
N = 12


def _contribution(rank: int) -> np.ndarray:
    return (rank + 1 + np.arange(N) / 256).astype(BF16)


def case_bfloat16_collectives() -> None:
    rank, size = dist.get_rank(), dist.get_world_size()
    parts = [_contribution(r).astype(np.float64) for r in range(size)]
    exact = sum(parts)
    bound = (size - 1) * 2.0 ** -8 * sum(np.abs(p) for p in parts)

    for op, expected in ((dist.ReduceOp.SUM, exact), (dist.ReduceOp.AVG, exact / size),
                         (dist.ReduceOp.MAX, parts[-1])):
        for async_op in (False, True):
            t = ddp.tensor(_contribution(rank))
            work = dist.all_reduce(t, op=op, async_op=async_op)
            if async_op:
                work.wait()
            assert t.dtype == ddp.bfloat16
            got = t.numpy().astype(np.float64)
            slack = bound / (size if op is dist.ReduceOp.AVG else 1) + 2.0 ** -8 * abs(expected)
            assert np.all(np.abs(got - expected) <= slack), (op, got, expected)
            assert np.array_equal(got, dist_first(got)), "ranks disagree"

    t = ddp.tensor(_contribution(rank))
    dist.broadcast(t, src=size - 1)
    np.testing.assert_array_equal(t.numpy().view(np.uint16),
                                  _contribution(size - 1).view(np.uint16))

    out = ddp.zeros(size * N, dtype=ddp.bfloat16)
    dist.all_gather_into_tensor(out, ddp.tensor(_contribution(rank)))
    np.testing.assert_array_equal(out.numpy().view(np.uint16),
                                  np.concatenate([_contribution(r) for r in range(size)])
                                  .view(np.uint16))

    full = ddp.tensor(np.concatenate([_contribution(rank)] * size))
    mine = ddp.zeros(N, dtype=ddp.bfloat16)
    dist.reduce_scatter_tensor(mine, full)
    assert np.all(np.abs(mine.numpy().astype(np.float64) - exact) <= bound + 1e-30)


def dist_first(array: np.ndarray) -> np.ndarray:
    """Rank 0's copy of ``array`` (float64), on every rank."""
    t = ddp.tensor(array)
    dist.broadcast(t, src=0)
    return t.numpy()
