"""DDP's ``comm_mode``s give the same gradients; ``GradSyncScheduler.sync_now`` averages.

Threads backend here; under MPI (where "nonblocking" really uses ``MPI_Iallreduce``)::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_ddp_comm_modes.py
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.nn.parallel import DistributedDataParallel as DDP

from . import _ddp_cases as cases

MODES = ["thread", "nonblocking", "sync"]


def case_allreduce_grads(comm_mode: str, gradient_as_bucket_view: bool) -> None:
    """Each rank sets grad = rank (plus one unset grad); the result is the mean over ranks."""
    rank, size = dist.get_rank(), dist.get_world_size()
    model = cases.make_net(0)
    ddp_model = DDP(model, bucket_cap_mb=0.0002, comm_mode=comm_mode,
                    gradient_as_bucket_view=gradient_as_bucket_view)
    params = list(model.parameters())
    for step in range(2):
        for p in params[:-1]:
            p.grad = ddp.full(tuple(p.shape), float(rank + step), dtype=p.dtype)
        params[-1].grad = None  # contributes zeros
        ddp_model.reducer.sync_now()
        for p in params[:-1]:
            np.testing.assert_allclose(p.grad.numpy(), (size - 1) / 2 + step, rtol=1e-12)
        np.testing.assert_array_equal(params[-1].grad.numpy(), 0)


@pytest.mark.parametrize("comm_mode", MODES)
@pytest.mark.parametrize("world_size", [2, 3])
def test_modes_match_single_process(monkeypatch, comm_mode, world_size):
    monkeypatch.setenv("DDP_COMM_MODE", comm_mode)  # read by DDP when comm_mode is None
    dist.spawn(cases.case_matches_single_process, world_size, args=("adamw", 0.0005))


@pytest.mark.parametrize("comm_mode", MODES)
@pytest.mark.parametrize("gradient_as_bucket_view", [False, True])
def test_allreduce_grads(comm_mode, gradient_as_bucket_view):
    dist.spawn(case_allreduce_grads, 3, args=(comm_mode, gradient_as_bucket_view))


def test_invalid_comm_mode():
    def case():
        with pytest.raises(ValueError, match="Invalid comm_mode: 'async'"):
            DDP(cases.make_net(0), comm_mode="async")

    dist.spawn(case, 1)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("comm_mode", MODES)
def test_modes_match_single_process_mpi(mpi_world, monkeypatch, comm_mode):
    monkeypatch.setenv("DDP_COMM_MODE", comm_mode)
    cases.case_matches_single_process("sgd", 0.0005, comm_mode == "sync")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("comm_mode", MODES)
def test_allreduce_grads_mpi(mpi_world, comm_mode):
    case_allreduce_grads(comm_mode, True)



def _mismatched_modes() -> None:
    mode = "thread" if dist.get_rank() == 0 else "nonblocking"
    with pytest.raises(RuntimeError, match="comm_mode"):
        DDP(ddp.nn.Linear(3, 2), comm_mode=mode)


def test_ranks_with_different_comm_modes_are_refused_not_hung():
    dist.spawn(_mismatched_modes, 2)


def test_comm_mode_from_environment(monkeypatch):
    from ddp.nn.parallel.distributed import default_comm_mode

    monkeypatch.delenv("DDP_COMM_MODE", raising=False)
    assert default_comm_mode() == "thread"
    monkeypatch.setenv("DDP_COMM_MODE", "sync")
    assert default_comm_mode() == "sync"
