"""DistributedDataParallel on the threads backend (simulated ranks; no MPI needed).

The cases live in ``_ddp_cases.py`` and run unchanged under mpiexec (test_ddp_mpi.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed.grad_sync import assign_buckets

from . import _ddp_cases as cases


def run(fn, world_size: int, *args) -> None:
    dist.spawn(fn, world_size, args=args)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_matches_single_process(world_size, optimizer):
    run(cases.case_matches_single_process, world_size, optimizer)


@pytest.mark.parametrize("bucket_cap_mb", [0.0001, 0.001])
def test_matches_single_process_many_buckets(bucket_cap_mb):
    run(cases.case_matches_single_process, 3, "sgd", bucket_cap_mb)


def test_gradient_as_bucket_view():
    run(cases.case_matches_single_process, 2, "adamw", 0.0005, True)


def test_float32():
    run(cases.case_float32_matches, 3)


@pytest.mark.parametrize("gradient_as_bucket_view", [False, True])
def test_no_sync_accumulation(gradient_as_bucket_view):
    run(cases.case_no_sync, 2, gradient_as_bucket_view)


@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("find_unused_parameters", [False, True])
def test_unused_parameters(world_size, find_unused_parameters):
    run(cases.case_unused_parameters, world_size, find_unused_parameters)


def test_model_mismatch_refused_on_every_rank():
    run(cases.case_model_mismatch, 3)


def test_settings_mismatch_refused_on_every_rank():
    run(cases.case_settings_mismatch, 3)


def test_buffers_follow_rank0():
    run(cases.case_buffers_follow_rank0, 2)


def test_comm_starts_during_backward():
    run(cases.case_comm_starts_during_backward, 2)


@pytest.mark.parametrize("comm_mode", ["thread", "nonblocking"])
def test_comm_failure_raises_in_backward(comm_mode):
    run(cases.case_comm_failure_raises, 2, comm_mode)


def test_backward_without_ddp_forward_is_local():
    run(cases.case_backward_without_ddp_forward_is_local, 2)


def test_state_dict_and_parameters_delegate():
    def fn():
        model = cases.make_net(0)
        ddp_model = cases.DDP(model)
        assert ddp_model.module is model
        assert [id(p) for p in ddp_model.parameters()] == [id(p) for p in model.parameters()]
        assert list(ddp_model.state_dict()) == [f"module.{k}" for k in model.state_dict()]
        x = ddp.ones(2, cases.IN, dtype=ddp.float64)
        np.testing.assert_array_equal(ddp_model(x).detach().numpy(), model(x).detach().numpy())

    run(fn, 1)


def test_invalid_arguments():
    def fn():
        with pytest.raises(ValueError, match="bucket_cap_mb"):
            cases.DDP(cases.make_net(0), bucket_cap_mb=0)
        with pytest.raises(ValueError, match="device_ids"):
            cases.DDP(cases.make_net(0), device_ids=[0])
        frozen = cases.make_net(0).requires_grad_(False)
        with pytest.raises(RuntimeError, match="doesn't have any parameter"):
            cases.DDP(frozen)

    run(fn, 1)


def test_assign_buckets_reverse_order_caps_and_dtypes():
    f4 = [np.zeros(n, np.float32) for n in (10, 3, 3, 50, 2)]  # 40, 12, 12, 200, 8 bytes
    # Reverse order; at most 24 bytes, a larger parameter alone; first bucket capped at 12.
    assert assign_buckets(f4, cap_bytes=24, first_cap_bytes=12) == [[4], [3], [2, 1], [0]]
    mixed = [np.zeros(2, np.float32), np.zeros(2, np.float64), np.zeros(2, np.float32)]
    assert assign_buckets(mixed, cap_bytes=1 << 20, first_cap_bytes=1 << 20) == [[2, 0], [1]]


def test_comm_failure_on_one_rank_names_it_and_nobody_hangs():
    def fn():
        model = cases.make_net(0)
        ddp_model = cases.DDP(model, bucket_cap_mb=0.0003)
        if dist.get_rank() == 1:
            def broken(array, op=dist.ReduceOp.SUM):
                raise OSError("injected network failure")

            ddp_model.reducer.process_group.allreduce = broken
        x = ddp.ones(2, cases.IN, dtype=ddp.float64)
        cases.loss_of(ddp_model, x, ddp.zeros(2, cases.OUT, dtype=ddp.float64)).backward()

    with pytest.raises(dist.SpawnError, match="rank 1 of 3.*injected network failure"):
        run(fn, 3)
