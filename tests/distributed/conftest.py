"""Fixtures shared by the distributed tests."""

from __future__ import annotations

import pytest

import ddp.distributed as dist


@pytest.fixture(scope="module")
def mpi_world():
    """The MPI world group, for tests marked ``mpi`` (run under ``mpiexec -n N``, N >= 2)."""
    if not dist.is_initialized():
        dist.init_process_group()
    assert dist.get_backend() == "mpi", "run these tests under mpiexec -n N (N >= 2)"
    return dist.get_default_group()
