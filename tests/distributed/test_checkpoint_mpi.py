"""Checkpoint failures under MPI, one process per rank: an error on one rank raises the same
type on every rank (no hang), the resume idiom on a first run, a corruption sweep.

Run with (any N >= 2)::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 3 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_checkpoint_mpi.py
"""

from __future__ import annotations

import pytest

from . import _checkpoint_cases as cases


@pytest.mark.mpi(min_size=2)
def test_resume_idiom_on_first_run(mpi_world):
    cases.case_resume_first_run()


@pytest.mark.mpi(min_size=2)
def test_save_error_on_rank0_raises_everywhere(mpi_world):
    cases.case_save_error_on_rank0()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("bad", ["index", "shard"])
def test_load_error_on_one_rank_raises_everywhere(mpi_world, bad):
    cases.case_load_error_on_one_rank(bad)


@pytest.mark.mpi(min_size=2)
def test_corruption_sweep(mpi_world):
    cases.case_corruption_sweep(211, 97)
