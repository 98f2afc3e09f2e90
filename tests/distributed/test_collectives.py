"""Collectives under MPI: run with `mpiexec -n N python -m pytest --with-mpi -m mpi tests`.

Each check is a plain function of the default group, so test_threads_backend.py runs the very
same checks through ``spawn(..., world_size=3)``. Every rank contributes values derived from its
rank and every assertion is on a value that does not depend on the rank (or is the rank's
known share), so the tests hold for any number of ranks.
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed import ReduceOp


def check_all_reduce_ops() -> None:
    r, n = dist.get_rank(), dist.get_world_size()
    t = ddp.full((2, 3), float(r))
    dist.all_reduce(t)
    np.testing.assert_array_equal(t.array, np.full((2, 3), (n - 1) * n / 2, np.float32))
    assert t.dtype == ddp.float32
    t = ddp.full((5,), float(r))
    dist.all_reduce(t, op=ReduceOp.AVG)
    np.testing.assert_allclose(t.array, (n - 1) / 2)
    t = ddp.tensor([float(r), -float(r)])
    dist.all_reduce(t, op=ReduceOp.MAX)
    assert t.array.tolist() == [n - 1, 0]
    t = ddp.tensor([float(r), -float(r)])
    dist.all_reduce(t, op=ReduceOp.MIN)
    assert t.array.tolist() == [0, -(n - 1)]
    t = ddp.tensor([r + 1, 2], dtype=ddp.int64)
    dist.all_reduce(t, op=ReduceOp.PRODUCT)
    assert t.array.tolist() == [int(np.prod(np.arange(1, n + 1))), 2**n]
    assert t.array.dtype == np.int64


def check_all_reduce_async_and_views() -> None:
    r, n = dist.get_rank(), dist.get_world_size()
    t = ddp.full((4,), float(r + 1))
    work = dist.all_reduce(t, async_op=True)
    work.wait()
    assert work.is_completed()
    np.testing.assert_array_equal(t.array, np.full(4, n * (n + 1) / 2, np.float32))
    # A non-contiguous view is reduced through a contiguous copy and written back.
    base = ddp.zeros(3, 4)
    base.array[:] = r
    view = base.t()
    dist.all_reduce(view)
    np.testing.assert_array_equal(base.array, np.full((3, 4), (n - 1) * n / 2, np.float32))


def check_broadcast() -> None:
    r, n = dist.get_rank(), dist.get_world_size()
    for src in range(n):
        t = ddp.tensor([float(r), 10.0 * r])
        dist.broadcast(t, src=src)
        assert t.array.tolist() == [src, 10.0 * src]


def check_all_gather() -> None:
    r, n = dist.get_rank(), dist.get_world_size()
    out = [ddp.zeros(2, dtype=ddp.int64) for _ in range(n)]
    dist.all_gather(out, ddp.tensor([r, r * r], dtype=ddp.int64))
    assert [o.array.tolist() for o in out] == [[i, i * i] for i in range(n)]
    flat = ddp.zeros(n * 3)
    dist.all_gather_into_tensor(flat, ddp.full((3,), float(r)))
    np.testing.assert_array_equal(flat.array, np.repeat(np.arange(n, dtype=np.float32), 3))


def check_reduce_scatter() -> None:
    r, n = dist.get_rank(), dist.get_world_size()
    inp = ddp.arange(2 * n, dtype=ddp.float32) + r  # element i holds i + r
    out = ddp.zeros(2)
    dist.reduce_scatter_tensor(out, inp)
    expect = [n * (2 * r + k) + (n - 1) * n / 2 for k in range(2)]
    assert out.array.tolist() == expect
    dist.reduce_scatter_tensor(out, inp, op=ReduceOp.AVG)
    np.testing.assert_allclose(out.array, np.array(expect) / n)


def check_objects_and_barrier() -> None:
    r, n = dist.get_rank(), dist.get_world_size()
    objs = [None] * n
    dist.all_gather_object(objs, {"rank": r, "name": f"r{r}"})
    assert objs == [{"rank": i, "name": f"r{i}"} for i in range(n)]
    payload = [r, "x", {"k": r}] if r == n - 1 else [None, None, None]
    dist.broadcast_object_list(payload, src=n - 1)
    assert payload == [n - 1, "x", {"k": n - 1}]
    dist.barrier()


def check_process_group_arrays() -> None:
    """The contract's array-level methods on a dup'd group, in float64 and int32."""
    pg = dist.get_default_group().dup()
    r, n = pg.rank(), pg.size()
    a = np.full(7, r, dtype=np.float64)
    pg.allreduce(a, ReduceOp.SUM)
    np.testing.assert_array_equal(a, (n - 1) * n / 2)
    b = np.array([r], dtype=np.int32)
    pg.broadcast(b, src=n - 1)
    assert b.tolist() == [n - 1]
    out = np.zeros((n, 2), dtype=np.int32)
    pg.allgather(out, np.array([r, -r], dtype=np.int32))
    assert out.tolist() == [[i, -i] for i in range(n)]
    rs = np.zeros(3, dtype=np.float64)
    pg.reduce_scatter(rs, np.ones(3 * n) * (r + 1))
    np.testing.assert_array_equal(rs, n * (n + 1) / 2)
    assert pg.allgather_object(r * 2) == [2 * i for i in range(n)]
    assert pg.broadcast_object({"from": r}, src=0) == {"from": 0}
    pg.barrier()
    unchecked = pg.dup(description="check_process_group_arrays")  # DDP's hot path: no header
    c = np.ones(3, dtype=np.float32)
    unchecked.allreduce(c, ReduceOp.AVG)
    np.testing.assert_array_equal(c, 1.0)


def check_described_dup() -> None:
    """dup(description) verifies the text on every rank and returns an unchecked channel."""
    r, n = dist.get_rank(), dist.get_world_size()
    world = dist.get_default_group()
    assert world.check_collectives
    plain = world.dup()
    assert plain.check_collectives and plain.dup().check_collectives
    fixed = world.dup(description="layout A")
    assert not fixed.check_collectives
    assert not fixed.dup().check_collectives  # a plain dup inherits the parent's checking
    with pytest.raises(AttributeError):
        fixed.check_collectives = True  # fixed at construction
    if n == 1:
        return  # a world of one cannot disagree with itself
    # Rank 0 reduces a (1, 6) array, the others (6,): the same bytes, so only the consensus
    # check objects. The plain dup still checks; the described one does not.
    shaped = np.full((1, 6) if r == 0 else (6,), float(r))
    with pytest.raises(RuntimeError, match=r"Collective mismatch.*shape=\(1, 6\)"):
        plain.allreduce(shaped)
    fixed.allreduce(shaped)
    np.testing.assert_array_equal(shaped.reshape(-1), (n - 1) * n / 2)
    # Descriptions that differ: every rank raises, naming what each rank passed.
    odd = f"layout {'B' if r == n - 1 else 'A'}"
    with pytest.raises(RuntimeError, match="Collective mismatch") as info:
        world.dup(description=odd)
    message = str(info.value)
    assert f"rank {n - 1} issued" in message and "dup(layout B)" in message
    assert "dup(layout A)" in message
    # Also when the parent group itself does not check.
    with pytest.raises(RuntimeError, match="dup\\(layout B\\)"):
        fixed.dup(description=odd)
    # Both groups stay usable afterwards.
    c = np.ones(4)
    world.allreduce(c)
    fixed.allreduce(c)
    np.testing.assert_array_equal(c, n * n)


def check_new_group() -> None:
    r, n = dist.get_rank(), dist.get_world_size()
    members = list(range(0, n, 2))  # even ranks
    sub = dist.new_group(members)
    if r % 2 == 1:
        assert sub is None
        return
    assert dist.get_world_size(sub) == len(members)
    assert dist.get_rank(sub) == members.index(r)
    t = ddp.tensor([float(r)])
    dist.all_reduce(t, group=sub)
    assert t.array.tolist() == [float(sum(members))]
    u = ddp.tensor([float(r)])
    dist.broadcast(u, src=members[-1], group=sub)  # src is a world rank, as in torch
    assert u.array.tolist() == [float(members[-1])]


def check_mismatch_detected() -> None:
    """Rank 0 all-reduces while the others broadcast: every rank raises, nobody hangs."""
    r = dist.get_rank()
    t = ddp.ones(3)
    with pytest.raises(RuntimeError, match="Collective mismatch") as info:
        if r == 0:
            dist.all_reduce(t)
        else:
            dist.broadcast(t, src=0)
    message = str(info.value)
    assert "rank 0 issued" in message and "allreduce(float32, numel=3, op=SUM)" in message
    assert "broadcast(float32, numel=3, src=0)" in message
    np.testing.assert_array_equal(t.array, 1.0)  # the data collective never ran
    # Same op, different element counts: also caught, naming the counts.
    with pytest.raises(RuntimeError, match="numel="):
        dist.all_reduce(ddp.ones(3 + r))
    # The group is still usable afterwards.
    t = ddp.full((2,), float(r))
    dist.all_reduce(t)
    n = dist.get_world_size()
    assert t.array.tolist() == [(n - 1) * n / 2] * 2


CHECKS = [
    check_all_reduce_ops,
    check_all_reduce_async_and_views,
    check_broadcast,
    check_all_gather,
    check_reduce_scatter,
    check_objects_and_barrier,
    check_process_group_arrays,
    check_described_dup,
    check_new_group,
    check_mismatch_detected,
]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_collective_mpi(mpi_world, check):
    check()


@pytest.mark.mpi(min_size=2)
def test_mpi_env_and_ranks(mpi_world):
    import os

    from mpi4py import MPI

    assert dist.get_rank() == MPI.COMM_WORLD.Get_rank()
    assert dist.get_world_size() == MPI.COMM_WORLD.Get_size()
    assert os.environ["RANK"] == str(dist.get_rank())
    assert os.environ["WORLD_SIZE"] == str(dist.get_world_size())
    assert os.environ["LOCAL_RANK"] == str(dist.get_local_rank())
    # All ranks run on this one machine in the test suite, so local ranks are world ranks.
    local = mpi_world.allgather_object(dist.get_local_rank())
    assert sorted(local) == list(range(dist.get_world_size()))
    assert mpi_world.comm != MPI.COMM_WORLD  # collectives run on a private duplicate


def test_local_backend_identity():
    """Without a launcher the default backend is "local": a world of one, identities."""
    pg = __import__("ddp.distributed.local_backend", fromlist=["x"]).LocalProcessGroup()
    a = np.arange(4, dtype=np.float32)
    pg.allreduce(a, ReduceOp.AVG)
    pg.broadcast(a, 0)
    np.testing.assert_array_equal(a, np.arange(4))
    out = np.zeros(4, dtype=np.float32)
    pg.allgather(out, a)
    np.testing.assert_array_equal(out, a)
    assert pg.allgather_object("x") == ["x"]
    with pytest.raises(ValueError, match="out has 3 float32 elements"):
        pg.allgather(np.zeros(3, np.float32), a)
    with pytest.raises(ValueError, match="not C-contiguous"):
        pg.allreduce(np.zeros((3, 4), np.float32).T)
    with pytest.raises(TypeError, match="AVG needs a floating array"):
        pg.allreduce(np.zeros(3, np.int64), ReduceOp.AVG)


def _cupy_or_skip():
    from ddp.backend import cupy_module, cupy_unavailable_reason

    cp = cupy_module()
    if cp is None:
        pytest.skip(cupy_unavailable_reason())
    return cp


@pytest.mark.gpu
@pytest.mark.mpi(min_size=2)
def test_cupy_arrays_are_staged_through_host_mpi(mpi_world):
    cp = _cupy_or_skip()
    r, n = mpi_world.rank(), mpi_world.size()
    a = cp.full(5, float(r), dtype=cp.float32)
    mpi_world.allreduce(a, ReduceOp.AVG)
    assert isinstance(a, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(a), (n - 1) / 2)
    out = cp.zeros(n, dtype=cp.int64)
    mpi_world.allgather(out, cp.array([r], dtype=cp.int64))
    assert cp.asnumpy(out).tolist() == list(range(n))
