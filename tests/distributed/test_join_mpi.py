"""Join for uneven inputs under MPI, one process per rank (cases in _join_cases.py).

Run with (any N >= 2)::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 3 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_join_mpi.py
"""

from __future__ import annotations

import pytest

from . import _join_cases as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("divide", [True, False])
@pytest.mark.parametrize("comm_mode", ["thread", "nonblocking", "sync"])
def test_uneven_inputs(mpi_world, divide, comm_mode):
    cases.case_uneven_inputs(divide, comm_mode)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
def test_uneven_inputs_zero(mpi_world, stage):
    cases.case_uneven_inputs_zero(stage)


@pytest.mark.mpi(min_size=2)
def test_throw_on_early_termination(mpi_world):
    cases.case_throw_on_early_termination()
