"""``ddp.distributed.traffic.count_traffic``: bytes per collective under the ring model."""

from __future__ import annotations

import numpy as np
import pytest

import ddp.distributed as dist
from ddp.distributed.traffic import count_traffic, sent_bytes


def case_counts(n_expected: int):
    pg = dist.get_default_group()
    n = pg.size()
    assert n == n_expected
    a = np.ones(12, dtype=np.float32)  # 48 bytes
    with count_traffic(dist.get_rank()) as sent:
        pg.allreduce(a)
        pg.allgather(np.empty(12 * n, np.float32), a)
        pg.reduce_scatter(np.empty(12, np.float32), np.ones(12 * n, np.float32))
        pg.broadcast(a, 0)
        pg.allgather_object("not counted")
        pg.barrier()
    f = (n - 1) / n
    assert sent.by_kind == {"allreduce": 2 * f * 48, "allgather": f * 48 * n,
                            "reduce_scatter": f * 48 * n, "broadcast": f * 48}
    assert sent.calls == 4
    pg.allreduce(a)  # outside: not counted
    assert sent.total == pytest.approx(f * 48 * (3 + 2 * n))


@pytest.mark.parametrize("world_size", [2, 3])
def test_counts_each_rank_apart(world_size):
    dist.spawn(case_counts, world_size, args=(world_size,))


def test_one_rank_sends_nothing():
    assert sent_bytes("allreduce", 100, 1) == 0.0
    assert sent_bytes("allgather", 100, 4) == 75.0
