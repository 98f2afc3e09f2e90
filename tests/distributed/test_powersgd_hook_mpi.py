"""PowerSGD communication hook under MPI, one process per rank (cases in _powersgd_cases.py)."""

from __future__ import annotations

import pytest

from . import _powersgd_cases as cases


@pytest.mark.mpi(min_size=2)
def test_plain_average_before_start(mpi_world):
    cases.case_plain_average_before_start()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("warm_start", [False, True])
def test_full_rank_is_exact(mpi_world, warm_start):
    cases.case_full_rank_is_exact(warm_start)


@pytest.mark.mpi(min_size=2)
def test_rank1_sum_is_exact(mpi_world):
    cases.case_rank1_sum_is_exact()


@pytest.mark.mpi(min_size=2)
def test_error_feedback(mpi_world):
    cases.case_error_feedback()


@pytest.mark.mpi(min_size=2)
def test_matches_numpy_reference(mpi_world):
    cases.case_matches_numpy_reference()


@pytest.mark.mpi(min_size=2)
def test_batched_same_shapes_match(mpi_world):
    cases.case_batched_same_shapes_match()


@pytest.mark.mpi(min_size=2)
def test_batched_hook(mpi_world):
    cases.case_batched_hook()


@pytest.mark.mpi(min_size=2)
def test_trains(mpi_world):
    cases.case_trains()
