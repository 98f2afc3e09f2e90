"""Join (uneven inputs) cases shared by the threads tests (test_join.py) and the MPI tests.

Rank ``r`` runs ``2 + r`` iterations, so the ranks join one after another. In iteration ``i``
the active ranks are those with more than ``i`` iterations; the documented rule: the gradient
is the sum of the active ranks' gradients divided by the initial world size
(``divide_by_initial_world_size=True``) or by the number of active ranks. Every rank computes
that single-process reference itself, and after the join every replica equals it.
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed.algorithms import Join
from ddp.distributed.optim import ZeroRedundancyOptimizer

from ._ddp_cases import DDP, IN, OUT, assert_params_equal, loss_of, make_net

PER_RANK, LR = 3, 0.1


def _batch(rank: int, step: int) -> tuple[ddp.Tensor, ddp.Tensor]:
    rng = np.random.default_rng(100 * rank + step)
    return (ddp.tensor(rng.standard_normal((PER_RANK, IN))),
            ddp.tensor(rng.standard_normal((PER_RANK, OUT))))


def _iterations(rank: int) -> int:
    return 2 + rank


def _reference(size: int, divide_by_initial: bool):
    """One process: in iteration i, SGD on the rule's combination of the active ranks' grads."""
    model = make_net(0)
    params = list(model.parameters())
    for step in range(_iterations(size - 1)):
        active = [r for r in range(size) if step < _iterations(r)]
        total = [np.zeros_like(p.array) for p in params]
        for r in active:
            for p in params:
                p.grad = None
            loss_of(model, *_batch(r, step)).backward()
            for t, p in zip(total, params, strict=True):
                t += p.grad.array
        divisor = size if divide_by_initial else len(active)
        with ddp.no_grad():
            for t, p in zip(total, params, strict=True):
                p.array -= LR * (t / divisor)
    return model


def case_uneven_inputs(divide_by_initial_world_size: bool = True,
                       comm_mode: str = "thread") -> None:
    rank, size = dist.get_rank(), dist.get_world_size()
    model = DDP(make_net(rank), comm_mode=comm_mode, bucket_cap_mb=0.0003)
    opt = ddp.optim.SGD(model.parameters(), lr=LR)
    with model.join(divide_by_initial_world_size=divide_by_initial_world_size):
        for step in range(_iterations(rank)):
            opt.zero_grad()
            loss_of(model, *_batch(rank, step)).backward()
            opt.step()
    assert_params_equal(model.module, _reference(size, divide_by_initial_world_size),
                        atol=1e-12)
    # Afterwards the model trains evenly again, with the usual averaging.
    opt.zero_grad()
    loss_of(model, *_batch(rank, 99)).backward()
    grads = [p.grad.array.copy() for p in model.parameters()]
    everyone = [None] * size
    dist.all_gather_object(everyone, grads)
    for g in everyone[1:]:
        for a, b in zip(everyone[0], g, strict=True):
            np.testing.assert_array_equal(a, b)


def case_uneven_inputs_zero(stage: int) -> None:
    """DDP + ZeRO: a joined rank's hook reduce-scatters zeros and steps its shard."""
    rank, size = dist.get_rank(), dist.get_world_size()
    model = DDP(make_net(rank))
    opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=stage, lr=LR,
                                  bucket_cap_mb=0.0003)
    with Join([model, opt]):
        for step in range(_iterations(rank)):
            opt.zero_grad()
            loss_of(model, *_batch(rank, step)).backward()
            opt.step()
    assert_params_equal(model.module, _reference(size, True), atol=1e-12)


def case_throw_on_early_termination() -> None:
    rank = dist.get_rank()
    model = DDP(make_net(rank))
    steps_done = 0
    with pytest.raises(RuntimeError, match="exhausted inputs"):
        with model.join(throw_on_early_termination=True):
            for step in range(_iterations(rank)):
                loss_of(model, *_batch(rank, step)).backward()
                steps_done += 1
    assert steps_done == 2  # the first iteration some rank has no data for raises everywhere
    dist.barrier()


def case_zero_cannot_lead() -> None:
    model = DDP(make_net(0))
    opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, lr=LR)
    with pytest.raises(ValueError, match="cannot be the first joinable"):
        Join([opt, model])
