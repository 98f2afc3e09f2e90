"""``gradient_as_bucket_view`` (DDP's default) on the threads backend; the same cases run under
mpiexec in test_bucket_view_mpi.py."""

from __future__ import annotations

import threading

import pytest

import ddp.distributed as dist

from . import _bucket_view_cases as cases


def run(fn, world_size: int, *args) -> None:
    dist.spawn(fn, world_size, args=args)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_matches_single_process(world_size, set_to_none):
    run(cases.case_matches_single_process, world_size, set_to_none)


@pytest.mark.parametrize("comm_mode", ["nonblocking", "sync"])
def test_matches_single_process_every_comm_mode(comm_mode):
    run(cases.case_matches_single_process, 3, True, comm_mode)


def test_copies_without_views():
    run(cases.case_copies_without_views, 2)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_no_sync_accumulation(set_to_none):
    run(cases.case_no_sync_accumulation, 3, set_to_none)


@pytest.mark.parametrize("world_size", [2, 3])
def test_user_assigned_grad(world_size):
    run(cases.case_user_assigned_grad, world_size)


@pytest.mark.parametrize("find_unused_parameters", [False, True])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_unused_parameters(find_unused_parameters, set_to_none):
    run(cases.case_unused_parameters, 3, find_unused_parameters, set_to_none)


@pytest.mark.parametrize("hook_name", ["allreduce_hook", "fp16_compress_hook"])
def test_comm_hook(hook_name):
    run(cases.case_comm_hook, 3, hook_name)


@pytest.fixture
def matmul_outs(monkeypatch) -> dict:
    """Thread id -> every ``out`` given to ``kernels.matmul`` in it (None: it allocated)."""
    from ddp import kernels

    seen: dict = {}
    real = kernels.matmul

    def spy(a, b, out=None):
        seen.setdefault(threading.get_ident(), []).append(out)
        return real(a, b, out=out)

    monkeypatch.setattr(kernels, "matmul", spy)
    return seen


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize(("as_view", "hooked"), [(True, False), (True, True), (False, False)])
def test_direct_write(matmul_outs, world_size, as_view, hooked):
    run(cases.case_direct_write, world_size, matmul_outs, as_view, hooked)
