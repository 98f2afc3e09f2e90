"""``memory_report`` under MPI, one process per rank (run at -n 2 and -n 3): the ledgers of
DDP, ZeRO 1/2 and fully sharded models equal the formulas on every rank.

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 3 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_memory_ledger_mpi.py
"""

from __future__ import annotations

import pytest

from . import test_memory_ledger as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("as_view", [False, True])
def test_ddp(mpi_world, as_view):
    cases.case_ddp(as_view, "adam")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
def test_zero(mpi_world, stage):
    cases.case_zero(stage, True)


@pytest.mark.mpi(min_size=2)
def test_fully_sharded(mpi_world):
    cases.case_fully_sharded()
