"""Checkpoints of fully sharded models under MPI, one process per rank (run at -n 2 and -n 3).

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 3 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_checkpoint_fsdp_mpi.py

With N ranks: fully sharded at N -> N - 1 ranks and -> one process, DDP at 2 -> fully sharded at
N, fully sharded -> ZeRO, bit-identical resumes; fully_shard's own schedule resumes too.
"""

from __future__ import annotations

import pytest

import ddp.distributed as dist

from . import _fsdp_checkpoint_cases as cases


def _n() -> int:
    return dist.get_world_size()


@pytest.mark.mpi(min_size=2)
def test_fsdp_to_fewer_ranks(mpi_world):
    cases.case_resume("fsdp", _n(), "fsdp", _n() - 1)


@pytest.mark.mpi(min_size=2)
def test_fsdp_to_more_ranks(mpi_world):
    cases.case_resume("fsdp", _n() - 1, "fsdp", _n())


@pytest.mark.mpi(min_size=2)
def test_fsdp_to_one_process_and_back(mpi_world):
    cases.case_resume("fsdp", _n(), "plain", 1)
    cases.case_resume("plain", 1, "fsdp", _n())


@pytest.mark.mpi(min_size=2)
def test_ddp_to_fsdp_and_back(mpi_world):
    cases.case_resume("ddp", 2, "fsdp", _n())
    cases.case_resume("fsdp", _n(), "ddp", 2)


@pytest.mark.mpi(min_size=2)
def test_fsdp_to_zero(mpi_world):
    cases.case_resume("fsdp", _n(), "zero", _n())


@pytest.mark.mpi(min_size=2)
def test_fsdp_model_only(mpi_world):
    cases.case_resume("fsdp", _n(), "fsdp", _n() - 1, False)


@pytest.mark.mpi(min_size=2)
def test_fully_shard_training_resumes(mpi_world):
    cases.case_fully_shard_resume(_n(), _n() - 1)
    cases.case_fully_shard_resume(_n() - 1, _n())
