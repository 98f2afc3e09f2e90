"""The non-finite report under MPI, one process per rank (cases in _nonfinite_cases.py)."""

from __future__ import annotations

import pytest

from . import _nonfinite_cases as cases


@pytest.mark.mpi(min_size=2)
def test_ddp_report(mpi_world):
    cases.case_ddp_report_names_rank_parameter_micro_batch()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_report(mpi_world, stage):
    cases.case_zero_report_names_rank_parameter_micro_batch(stage)


@pytest.mark.mpi(min_size=2)
def test_zero_check_alone(mpi_world):
    cases.case_zero_check_alone_names_the_owner()
