"""bfloat16 all-reduce, broadcast, all-gather and reduce-scatter on threads and MPI ranks."""

from __future__ import annotations

import pytest

import ddp.distributed as dist

from . import _bfloat16_cases as cases


@pytest.mark.parametrize("world_size", [2, 3])
def test_bfloat16_collectives_threads(world_size):
    dist.spawn(cases.case_bfloat16_collectives, world_size)


@pytest.mark.mpi(min_size=2)
def test_bfloat16_collectives_mpi(mpi_world):
    cases.case_bfloat16_collectives()
