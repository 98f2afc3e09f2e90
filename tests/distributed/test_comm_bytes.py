"""``count_traffic()``: payload bytes per collective, and per DDP step for each comm hook."""

from __future__ import annotations

import numpy as np
import pytest

import ddp.distributed as dist
from ddp.distributed.traffic import count_traffic

from . import _comm_bytes_cases as cases


@pytest.mark.parametrize("world_size", [2, 3])
def test_bytes_per_step_plain_fp16_powersgd(world_size):
    dist.spawn(cases.case_bytes_per_step, world_size)


def _collectives():
    pg = dist.get_default_group()
    size, me = pg.size(), pg.rank()
    with count_traffic() as count:
        pg.allreduce(np.ones(10, dtype=np.float32))
        pg.allgather(np.zeros(6 * size, dtype=np.float64), np.ones(6))
        pg.reduce_scatter(np.zeros(2), np.ones(2 * size))
    pg.allreduce(np.ones(100, dtype=np.float32))  # after the count: not counted
    assert count.payload(me) == 40 + 48 + 16 * size
    assert count.payload_by_rank.keys() <= set(range(size))
    return dict(count.payload_by_kind)


def test_counts_every_simulated_rank_under_threads():
    with count_traffic() as outer:
        dist.spawn(_collectives, 3)
    assert outer.payload_by_rank == {r: 40 + 48 + 16 * 3 + 400 for r in range(3)}  # + the uncounted
    assert outer.payload_by_kind == {"allreduce": 3 * 440, "allgather": 3 * 48,
                             "reduce_scatter": 3 * 48}
    assert outer.calls == 12
