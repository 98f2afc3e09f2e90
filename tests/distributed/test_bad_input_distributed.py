"""Misuse across ranks fails on every rank with an error naming the ranks, never a hang or a
silently wrong sum. Threads backend through ``dist.spawn``; MPI where its behaviour differs."""

from __future__ import annotations

import pytest

import ddp
import ddp.distributed as dist
import ddp.nn as nn
import ddp.optim as optim
from ddp.nn.parallel import DistributedDataParallel as DDP


def spawn_error(fn, world_size=2):
    with pytest.raises(dist.SpawnError) as info:
        dist.spawn(fn, world_size)
    return info.value


def _all_reduce_shapes():
    x = ddp.ones(3 + dist.get_rank())
    dist.all_reduce(x)


def _all_reduce_transposed():
    # Same element count, different shapes: an element-wise sum would be silently wrong.
    x = ddp.ones((2, 3) if dist.get_rank() else (3, 2))
    dist.all_reduce(x)


def _all_reduce_dtypes():
    x = ddp.ones(3, dtype=ddp.float64 if dist.get_rank() else ddp.float32)
    dist.all_reduce(x)


def _broadcast_src_differs():
    dist.broadcast(ddp.ones(2), dist.get_rank())


def _all_gather_shapes():
    r = dist.get_rank()
    dist.all_gather([ddp.zeros(2 + r) for _ in range(2)], ddp.ones(2 + r))


def _different_collectives():
    if dist.get_rank() == 0:
        dist.barrier()
    else:
        dist.all_reduce(ddp.ones(2))


@pytest.mark.parametrize("fn, fragments", [
    (_all_reduce_shapes, ["rank 0 issued", "numel=3", "rank 1 issued", "numel=4"]),
    (_all_reduce_transposed, ["shape=(3, 2)", "shape=(2, 3)"]),
    (_all_reduce_dtypes, ["float32", "float64"]),
    (_broadcast_src_differs, ["src=0", "src=1"]),
    (_all_gather_shapes, ["allgather(float32, numel=2)", "numel=3"]),
    (_different_collectives, ["barrier()", "allreduce("]),
], ids=["shape", "transposed", "dtype", "src", "all_gather", "kind"])
def test_mismatched_collectives_name_the_ranks(fn, fragments):
    err = spawn_error(fn)
    message = str(err)
    assert "Collective mismatch" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_rank_skipping_a_collective_does_not_hang():
    def fn():
        if dist.get_rank() == 0:
            dist.all_reduce(ddp.ones(2))

    err = spawn_error(fn)
    assert "rank(s) [1]" in str(err) and "already returned" in str(err)


def test_failure_on_one_rank_names_it():
    def fn():
        if dist.get_rank() == 1:
            raise ValueError("boom on purpose")
        dist.barrier()

    err = spawn_error(fn, 3)
    assert err.rank == 1 and isinstance(err.exception, ValueError)
    assert str(err).startswith("rank 1 of 3 raised ValueError: boom on purpose")


@pytest.mark.parametrize("case", ["broadcast-src", "all_gather-list", "double-init"])
def test_argument_errors_inside_a_world(case):
    def fn():
        if case == "broadcast-src":
            dist.broadcast(ddp.ones(2), 2)
        elif case == "all_gather-list":
            dist.all_gather([ddp.ones(2)] * 3, ddp.ones(2))
        else:
            dist.init_process_group("threads")
            dist.init_process_group("threads")

    message = str(spawn_error(fn))
    expected = {"broadcast-src": "rank 2 is not a member of group 'WORLD' [0, 1]",
                "all_gather-list": "tensor_list has 3 tensors, the group has 2 ranks",
                "double-init": "already has a default process group"}[case]
    assert expected in message


@pytest.mark.parametrize("case", ["out-features", "transposed", "dtype"])
def test_ddp_on_models_that_differ_across_ranks(case):
    def fn():
        r = dist.get_rank()
        model = {"out-features": lambda: nn.Linear(2, 3 + r),
                 "transposed": lambda: nn.Linear(2 + r, 3 - r),
                 "dtype": lambda: nn.Linear(2, 3, dtype=ddp.float64 if r else ddp.float32)}[case]
        DDP(model())

    message = str(spawn_error(fn))
    assert "the model differs across ranks" in message and "rank(s) [1]" in message
    assert "'weight'" in message


def test_zero_wrong_stage_and_checkpoint_mismatch(tmp_path):
    import ddp.distributed.checkpoint as dcp
    from ddp.distributed.optim import ZeroRedundancyOptimizer

    def bad_stage():
        ZeroRedundancyOptimizer(nn.Linear(2, 2).parameters(), optim.SGD, lr=0.1, stage=3)

    assert "stage must be 1 or 2, got 3" in str(spawn_error(bad_stage))

    def save_then_load_other():
        ddp.manual_seed(0)
        model = nn.Linear(2, 3)
        dcp.save(str(tmp_path), model)
        dcp.load(str(tmp_path), nn.Linear(3, 2))

    message = str(spawn_error(save_then_load_other))
    assert "'weight'" in message and "(3, 2)" in message and "(2, 3)" in message


# ---------------------------------------------------------------------------------------- MPI
@pytest.mark.mpi(min_size=2)
def test_mpi_mismatched_all_reduce_raises_on_every_rank():
    dist.init_process_group("mpi")
    try:
        rank = dist.get_rank()
        x = ddp.ones((2, 3) if rank == 1 else (3, 2))
        with pytest.raises(RuntimeError, match="Collective mismatch") as info:
            dist.all_reduce(x)
        assert "shape=(3, 2)" in str(info.value) and "shape=(2, 3)" in str(info.value)
        y = ddp.ones(3 + (rank == 1))
        with pytest.raises(RuntimeError, match="rank 1 issued"):
            dist.all_reduce(y)
        # The group stays usable: the check runs before any data moves.
        z = ddp.full((2,), float(rank))
        dist.all_reduce(z)
        size = dist.get_world_size()
        assert z.tolist() == [size * (size - 1) / 2] * 2
    finally:
        dist.destroy_process_group()


@pytest.mark.mpi(min_size=2)
def test_mpi_argument_errors_before_any_communication():
    dist.init_process_group("mpi")
    try:
        size = dist.get_world_size()
        with pytest.raises(ValueError, match=f"rank {size} is not a member"):
            dist.broadcast(ddp.ones(2), size)
        with pytest.raises(ValueError, match=f"the group has {size} ranks"):
            dist.all_gather([ddp.ones(2)] * (size + 1), ddp.ones(2))
        dist.barrier()  # every rank raised locally, so the sequence is still aligned
    finally:
        dist.destroy_process_group()
