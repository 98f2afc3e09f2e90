"""DDP communication hooks under MPI, one process per rank (cases in _comm_hook_cases.py and
_comm_bytes_cases.py)."""

from __future__ import annotations

import pytest

from . import _comm_bytes_cases as bytes_cases
from . import _comm_hook_cases as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("comm_mode", ["thread", "nonblocking", "sync"])
def test_allreduce_hook_equals_default(mpi_world, comm_mode):
    cases.case_allreduce_hook_equals_default(comm_mode)


@pytest.mark.mpi(min_size=2)
def test_fp16_compress_hook(mpi_world):
    cases.case_fp16_compress_hook()


@pytest.mark.mpi(min_size=2)
def test_bf16_compress_hook(mpi_world):
    cases.case_bf16_compress_hook()


@pytest.mark.mpi(min_size=2)
def test_custom_hooks_see_the_buckets(mpi_world):
    cases.case_custom_hooks_see_the_buckets()


@pytest.mark.mpi(min_size=2)
def test_bytes_per_step_plain_fp16_powersgd(mpi_world):
    bytes_cases.case_bytes_per_step()
