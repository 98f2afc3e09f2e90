"""The threads backend: the MPI checks of test_collectives.py on 3 simulated ranks, plus what
only a one-process simulation must guarantee (per-thread ranks, no hang when a rank dies or
returns early, deterministic results, independent dup'd channels)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed import ReduceOp, SpawnError

from .test_collectives import CHECKS


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_collectives_threads(check, world_size):
    if world_size == 1 and check.__name__ == "check_mismatch_detected":
        pytest.skip("a world of one cannot disagree with itself")
    dist.spawn(check, world_size)


def test_spawn_ranks_are_thread_local_and_results_ordered():
    def fn(offset):
        dist.init_process_group()  # allowed once inside spawn: the launcher already did it
        assert dist.is_initialized() and dist.get_backend() == "threads"
        return dist.get_rank() + offset, dist.get_world_size(), dist.get_local_rank()

    assert dist.spawn(fn, 4, args=(10,)) == [(10 + r, 4, r) for r in range(4)]
    assert not dist.is_initialized()  # the caller's thread has no group afterwards


def test_double_init_inside_spawn_raises():
    def fn():
        dist.init_process_group()
        dist.init_process_group()

    with pytest.raises(SpawnError, match="already has a default process group"):
        dist.spawn(fn, 2)


def test_rank_exception_is_reraised_naming_the_rank_and_peers_do_not_hang():
    def fn():
        if dist.get_rank() == 1:
            raise ValueError("bad batch on this rank")
        dist.all_reduce(ddp.ones(4))  # ranks 0 and 2 wait here for rank 1
        dist.barrier()

    with pytest.raises(SpawnError, match=r"rank 1 of 3 raised ValueError: bad batch") as info:
        dist.spawn(fn, 3)
    assert info.value.rank == 1
    assert isinstance(info.value.__cause__, ValueError)


def test_rank_that_returns_early_does_not_hang_the_others():
    def fn():
        if dist.get_rank() == 0:
            dist.barrier()  # rank 1 never calls it

    with pytest.raises(SpawnError, match=r"rank 0 .*waits in barrier for rank\(s\) \[1\]"):
        dist.spawn(fn, 2)


def test_mismatch_fails_the_whole_spawn_naming_ranks():
    def fn():
        t = ddp.ones(2)
        if dist.get_rank() == 2:
            dist.broadcast(t, src=0)
        else:
            dist.all_reduce(t)

    with pytest.raises(SpawnError, match=r"ranks \[0, 1\] issued #1 allreduce.*rank 2 issued #1 "
                                         r"broadcast"):
        dist.spawn(fn, 3)


def test_reductions_are_deterministic_and_identical_across_ranks():
    values = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    expect = (values[0] + values[1]) + values[2]  # rank order

    def fn():
        a = values[dist.get_rank()].copy()
        dist.get_default_group().allreduce(a)
        return a

    results = dist.spawn(fn, 3)
    for a in results:
        np.testing.assert_array_equal(a, expect)  # bitwise, on every rank


def test_dup_channel_runs_concurrently_with_world():
    """A communication thread on a dup'd group and the rank's own thread do not interfere."""

    def fn():
        r = dist.get_rank()
        comm = dist.get_default_group().dup()
        grads = np.full(8, float(r), np.float32)
        worker = threading.Thread(target=lambda: [comm.allreduce(grads) for _ in range(3)])
        worker.start()
        for _ in range(5):
            t = ddp.tensor([1.0])
            dist.all_reduce(t)
            assert t.array.tolist() == [3.0]
        worker.join()
        return grads.tolist()

    for grads in dist.spawn(fn, 3):
        assert grads == [3.0 * 9] * 8  # (0+1+2) then x3 twice


def test_objects_are_copied_not_shared():
    def fn():
        obj = {"rank": dist.get_rank(), "items": []}
        got = dist.get_default_group().allgather_object(obj)
        got[0]["items"].append(dist.get_rank())  # must not leak into other ranks' copies
        dist.barrier()
        return got[0]["items"]

    assert dist.spawn(fn, 3) == [[0], [1], [2]]


def test_errors_name_sizes_and_ranks():
    def fn():
        pg = dist.get_default_group()
        with pytest.raises(ValueError, match="broadcast src 5 is out of range .* size 2"):
            pg.broadcast(np.zeros(2), src=5)
        with pytest.raises(ValueError, match="reduce_scatter: in has 3 float64 elements"):
            pg.reduce_scatter(np.zeros(2), np.zeros(3))
        with pytest.raises(ValueError, match="tensor_list has 1 tensors, the group has 2"):
            dist.all_gather([ddp.zeros(1)], ddp.zeros(1))
        t = ddp.ones(1)
        dist.all_reduce(t, op="avg")
        assert t.array.tolist() == [1.0]

    dist.spawn(fn, 2)


def test_not_initialized_outside_spawn():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="has not been initialized"):
        dist.get_rank()
    with pytest.raises(RuntimeError, match="spawn"):
        dist.init_process_group("threads")


def test_local_backend_by_default_without_launcher(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                "SLURM_STEP_NUM_TASKS", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    dist.init_process_group()
    try:
        assert dist.get_backend() == "local"
        assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
        t = ddp.tensor([2.0, 3.0])
        dist.all_reduce(t, op=ReduceOp.AVG)
        assert t.array.tolist() == [2.0, 3.0]
        with pytest.raises(RuntimeError, match="already initialised"):
            dist.init_process_group()
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


@pytest.mark.gpu
def test_cupy_arrays_threads():
    from ddp.backend import cupy_module, cupy_unavailable_reason

    cp = cupy_module()
    if cp is None:
        pytest.skip(cupy_unavailable_reason())

    def fn():
        a = cp.full(4, float(dist.get_rank()), dtype=cp.float32)
        dist.get_default_group().allreduce(a, ReduceOp.SUM)
        return cp.asnumpy(a).tolist()

    assert dist.spawn(fn, 3) == [[3.0] * 4] * 3


def test_uneven_backwards_fail_at_the_timeout_instead_of_hanging(monkeypatch):
    from ddp.nn.parallel import DistributedDataParallel as DDP

    monkeypatch.setenv("DDP_TIMEOUT", "1")

    def fn():
        model = DDP(ddp.nn.Linear(4, 2))
        for _ in range(3 if dist.get_rank() == 0 else 2):  # rank 0: one batch more
            model(ddp.ones(2, 4)).sum().backward()
        dist.barrier()

    with pytest.raises(SpawnError, match=r"waited in .* past the timeout of 1 s: the other ranks "
                                         r"never issued it"):
        dist.spawn(fn, 2)
