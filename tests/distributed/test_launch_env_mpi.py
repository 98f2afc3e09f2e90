"""Under ``mpiexec -n N``: what ``import ddp`` read from the launcher (torchrun's variables,
before any process group) is what MPI itself says once initialised."""

from __future__ import annotations

import pytest

import ddp.distributed as dist
from ddp import config


@pytest.mark.mpi(min_size=2)
def test_launcher_variables_agree_with_mpi(mpi_world):
    found = config.launcher_env()
    node = mpi_world.allgather_object(dist.get_local_rank())
    assert found == {"RANK": dist.get_rank(), "WORLD_SIZE": dist.get_world_size(),
                     "LOCAL_RANK": dist.get_local_rank(), "LOCAL_WORLD_SIZE": len(node)}
    # every rank read a different rank, and all of them read the same world
    everyone = mpi_world.allgather_object(found)
    assert sorted(f["RANK"] for f in everyone) == list(range(dist.get_world_size()))
