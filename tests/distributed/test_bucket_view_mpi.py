"""``gradient_as_bucket_view`` under MPI, one process per rank: the cases of
test_bucket_view.py. Run with ``mpiexec -n 2`` and ``-n 3`` (see test_ddp_mpi.py)."""

from __future__ import annotations

import threading

import pytest

from . import _bucket_view_cases as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("comm_mode", ["thread", "nonblocking", "sync"])
def test_matches_single_process(mpi_world, set_to_none, comm_mode):
    cases.case_matches_single_process(set_to_none, comm_mode)


@pytest.mark.mpi(min_size=2)
def test_copies_without_views(mpi_world):
    cases.case_copies_without_views()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("set_to_none", [True, False])
def test_no_sync_accumulation(mpi_world, set_to_none):
    cases.case_no_sync_accumulation(set_to_none)


@pytest.mark.mpi(min_size=2)
def test_user_assigned_grad(mpi_world):
    cases.case_user_assigned_grad()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("find_unused_parameters", [False, True])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_unused_parameters(mpi_world, find_unused_parameters, set_to_none):
    cases.case_unused_parameters(find_unused_parameters, set_to_none)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("hook_name", ["allreduce_hook", "fp16_compress_hook"])
def test_comm_hook(mpi_world, hook_name):
    cases.case_comm_hook(hook_name)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize(("as_view", "hooked"), [(True, False), (True, True), (False, False)])
def test_direct_write(mpi_world, monkeypatch, as_view, hooked):
    from ddp import kernels

    outs: dict = {}
    real = kernels.matmul

    def spy(a, b, out=None):
        outs.setdefault(threading.get_ident(), []).append(out)
        return real(a, b, out=out)

    monkeypatch.setattr(kernels, "matmul", spy)
    cases.case_direct_write(outs, as_view, hooked)
