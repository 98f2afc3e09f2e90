"""The ``nccl`` backend's code paths on the fake CuPy, with a fake NCCL over MPI.

Runs where ``DDP_FAKE_CUPY=1`` (no GPU needed; on a GPU machine test_gpu_devices.py runs the
real NCCL instead)::

    DDP_FAKE_CUPY=1 .venv/bin/python -m pytest -q -m gpu tests/gpu/test_nccl_backend.py
    DDP_FAKE_CUPY=1 .venv/bin/mpiexec -n 2 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        -p no:cacheprovider tests/gpu/test_nccl_backend.py

Every assertion holds for any number of ranks.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import ddp
from ddp.backend import cupy_module

pytestmark = pytest.mark.gpu


@pytest.fixture
def fake_nccl(monkeypatch):
    pytest.importorskip("mpi4py")
    cp = cupy_module()
    if cp is None or getattr(cp, "__version__", "") != "0.0-fake":
        pytest.skip("the fake NCCL runs on the fake CuPy only (DDP_FAKE_CUPY=1)")
    import _fake_nccl

    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", _fake_nccl.module())
    return cp


def _nccl_group(comm):
    from ddp.distributed.mpi_backend import MPIProcessGroup
    from ddp.distributed.nccl_backend import NCCLProcessGroup

    n = comm.Get_size()
    host = MPIProcessGroup(comm, list(range(n)), "W", 0, check_collectives=False)
    return NCCLProcessGroup(host)


def _check_collectives(cp, pg) -> None:
    r, n = pg.rank(), pg.size()
    a = cp.full(4, float(r + 1), dtype=cp.float32)
    pg.allreduce(a)
    np.testing.assert_array_equal(a.get(), n * (n + 1) / 2)
    b = cp.full(4, float(r + 1), dtype=cp.float64)
    pg.allreduce(b, "avg")
    np.testing.assert_array_equal(b.get(), (n + 1) / 2)
    c = cp.full(3, r, dtype=cp.int64)
    pg.allreduce(c, "max")
    assert c.get().tolist() == [n - 1] * 3
    d = cp.full(2, float(r), dtype=cp.float64)
    pg.broadcast(d, n - 1)
    assert d.get().tolist() == [n - 1] * 2
    out = cp.zeros(2 * n, dtype=cp.int32)
    pg.allgather(out, cp.array([r, -r], dtype=cp.int32))
    assert out.get().tolist() == [v for i in range(n) for v in (i, -i)]
    for op, expected in (("sum", n * (n + 1) / 2), ("avg", (n + 1) / 2)):
        rs = cp.zeros(3, dtype=cp.float32)
        pg.reduce_scatter(rs, cp.ones(3 * n, dtype=cp.float32) * (r + 1), op)
        np.testing.assert_array_equal(rs.get(), expected)
    host = np.full(3, float(r))  # host arrays go through the MPI group
    pg.allreduce(host)
    np.testing.assert_array_equal(host, n * (n - 1) / 2)
    host_rs = np.zeros(1)
    pg.reduce_scatter(host_rs, np.full(n, float(r)))
    np.testing.assert_array_equal(host_rs, n * (n - 1) / 2)
    e = cp.full(2, float(r), dtype=cp.float32)
    pg.allreduce_async(e, "avg").wait()
    np.testing.assert_array_equal(e.get(), (n - 1) / 2)
    h = np.full(2, float(r))
    pg.allreduce_async(h).wait()
    np.testing.assert_array_equal(h, n * (n - 1) / 2)
    assert pg.allgather_object(r) == list(range(n))
    assert pg.broadcast_object({"from": r}, n - 1) == {"from": n - 1}
    pg.barrier()


def _check_group(cp, pg) -> None:
    r, n = pg.rank(), pg.size()
    assert pg.backend == "nccl" and pg.check_collectives and not pg.mpi.check_collectives
    _check_collectives(cp, pg)
    plain, fixed = pg.dup(), pg.dup(description="fake nccl test")
    assert plain.check_collectives and not fixed.check_collectives
    assert not plain.mpi.check_collectives  # host collectives are checked once, by the group
    _check_collectives(cp, plain)
    _check_collectives(cp, fixed)
    sub = pg.new_subgroup(list(range(n)))
    _check_collectives(cp, sub)
    if n > 1:  # rank 0 all-reduces while the others broadcast: every rank raises
        t = cp.ones(3, dtype=cp.float32)
        with pytest.raises(RuntimeError, match="Collective mismatch") as info:
            if r == 0:
                pg.allreduce(t)
            else:
                pg.broadcast(t, 0)
        assert "allreduce(float32, numel=3, op=SUM)" in str(info.value)
        assert "broadcast(float32, numel=3, src=0)" in str(info.value)
        _check_collectives(cp, pg)  # still usable
    for group in (sub, fixed, plain, pg):
        group.destroy()


def _check_ddp(pg) -> None:
    from ddp.nn.parallel import DistributedDataParallel

    r, n = pg.rank(), pg.size()
    model = ddp.nn.Linear(3, 2, bias=False).cuda()
    wrapped = DistributedDataParallel(model, process_group=pg)
    wrapped(ddp.full((1, 3), float(r + 1), device="cuda")).sum().backward()
    np.testing.assert_array_equal(model.weight.grad.cpu().numpy(), (n + 1) / 2)


def test_nccl_group_of_one_rank(fake_nccl):
    from mpi4py import MPI

    _check_group(fake_nccl, _nccl_group(MPI.COMM_SELF.Dup()))
    pg = _nccl_group(MPI.COMM_SELF.Dup())
    _check_ddp(pg)
    pg.destroy()


@pytest.mark.mpi(min_size=2)
def test_nccl_group_over_mpi(fake_nccl):
    from mpi4py import MPI

    _check_group(fake_nccl, _nccl_group(MPI.COMM_WORLD.Dup()))
    pg = _nccl_group(MPI.COMM_WORLD.Dup())
    _check_ddp(pg)
    pg.destroy()


def test_count_traffic_counts_a_host_array_forwarded_to_mpi_once(fake_nccl):
    from mpi4py import MPI

    from ddp.distributed.traffic import count_traffic

    pg = _nccl_group(MPI.COMM_SELF.Dup())
    with count_traffic() as count:
        pg.allreduce(np.ones(8, dtype=np.float32))  # host array: NCCL's group hands it to MPI
        pg.allreduce(fake_nccl.ones(4, dtype=fake_nccl.float32))  # device array: NCCL itself
    assert count.payload_by_kind == {"allreduce": 32 + 16} and count.calls == 2
    pg.destroy()
