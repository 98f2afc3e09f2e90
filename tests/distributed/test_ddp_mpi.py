"""DistributedDataParallel under MPI, one process per rank: the cases of test_ddp.py.

Run with::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_ddp_mpi.py

Every case holds for any number of ranks (it computes the single-process reference itself).
"""

from __future__ import annotations

import pytest

from . import _ddp_cases as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("bucket_cap_mb", [25, 0.0001])
def test_matches_single_process(mpi_world, optimizer, bucket_cap_mb):
    cases.case_matches_single_process(optimizer, bucket_cap_mb)


@pytest.mark.mpi(min_size=2)
def test_gradient_as_bucket_view(mpi_world):
    cases.case_matches_single_process("adamw", 0.0005, True)


@pytest.mark.mpi(min_size=2)
def test_float32(mpi_world):
    cases.case_float32_matches()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("gradient_as_bucket_view", [False, True])
def test_no_sync_accumulation(mpi_world, gradient_as_bucket_view):
    cases.case_no_sync(gradient_as_bucket_view)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("find_unused_parameters", [False, True])
def test_unused_parameters(mpi_world, find_unused_parameters):
    cases.case_unused_parameters(find_unused_parameters)


@pytest.mark.mpi(min_size=2)
def test_model_mismatch_refused_on_every_rank(mpi_world):
    cases.case_model_mismatch()


@pytest.mark.mpi(min_size=2)
def test_buffers_follow_rank0(mpi_world):
    cases.case_buffers_follow_rank0()


@pytest.mark.mpi(min_size=2)
def test_comm_starts_during_backward(mpi_world):
    cases.case_comm_starts_during_backward()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("comm_mode", ["thread", "nonblocking"])
def test_comm_failure_raises_in_backward(mpi_world, comm_mode):
    cases.case_comm_failure_raises(comm_mode)


@pytest.mark.mpi(min_size=2)
def test_backward_without_ddp_forward_is_local(mpi_world):
    cases.case_backward_without_ddp_forward_is_local()


@pytest.mark.mpi(min_size=2)
def test_settings_mismatch_refused_on_every_rank(mpi_world):
    cases.case_settings_mismatch()
