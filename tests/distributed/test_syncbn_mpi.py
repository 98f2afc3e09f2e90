"""SyncBatchNorm under MPI, one process per rank: the cases of test_syncbn.py.

Run with::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 3 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_syncbn_mpi.py

Every case holds for any number of ranks (it computes the single-process reference itself).
"""

from __future__ import annotations

import pytest

from . import _syncbn_cases as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("uneven", [False, True])
def test_matches_single_process(mpi_world, uneven, kernel_path):
    cases.case_matches_single_process(uneven)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("comm_mode", ["nonblocking", "sync"])
def test_matches_single_process_other_comm_modes(mpi_world, comm_mode):
    cases.case_matches_single_process(True, 2, comm_mode)


@pytest.mark.mpi(min_size=2)
def test_statistics_without_ddp(mpi_world, kernel_path):
    cases.case_statistics_without_ddp()


@pytest.mark.mpi(min_size=2)
def test_one_collective_per_forward_and_backward(mpi_world):
    cases.case_eval_and_no_grad_input_run_no_collective()
