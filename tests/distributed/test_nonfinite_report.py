"""Non-finite gradients traced to parameter, rank and micro-batch (threads backend and one
process; the same cases run under MPI in test_nonfinite_report_mpi.py)."""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed.nonfinite import LOCAL, REDUCED, NonfiniteCensus

from . import _nonfinite_cases as cases


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_report(world_size):
    dist.spawn(cases.case_ddp_report_names_rank_parameter_micro_batch, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_report(world_size, stage):
    dist.spawn(cases.case_zero_report_names_rank_parameter_micro_batch, world_size,
               args=(stage,))


@pytest.mark.parametrize("world_size", [2, 3])
def test_zero_check_alone(world_size):
    dist.spawn(cases.case_zero_check_alone_names_the_owner, world_size)


def test_one_process_tracked():
    ddp.manual_seed(0)
    model = cases.TwoHeads()
    opt = ddp.optim.SGD(model.parameters(), lr=0.1)
    scaler = ddp.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.track_nonfinite(model)
    with cases.Lines() as log:
        cases._steps(model, opt, scaler, 0, 2)
    cases._check_line(log.lines, 0, 0, 2)


def test_one_process_untracked_names_the_group_slot():
    p = ddp.nn.Parameter(ddp.ones(3))
    q = ddp.nn.Parameter(ddp.ones(2, 2))
    opt = ddp.optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1)
    scaler = ddp.amp.GradScaler("cpu", init_scale=8.0)
    with cases.Lines() as log:
        for bad in (False, True, False):
            loss = (p.sum() + (q * (np.inf if bad else 1.0)).sum())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert log.lines == [
        "GradScaler: skipped step 1: non-finite gradient first in param_groups[1][0] shape "
        "(2, 2) (seen after averaging on ranks 0; the source rank is unknown) at micro-batch 0; "
        "loss scale (last 2, oldest first): 8, 8"]


def test_disabled_scaler_and_untrack_remove_everything():
    model = cases.TwoHeads()
    scaler = ddp.amp.GradScaler("cpu")
    scaler.track_nonfinite(model)
    assert all(p._grad_hooks for p in model.parameters())
    scaler.untrack_nonfinite()
    assert not any(p._grad_hooks for p in model.parameters())


def test_census_slots_and_regroup():
    census = NonfiniteCensus(rank=1, world=3)
    census.mark(4, None, REDUCED)
    census.mark(2, 1, LOCAL)  # a local sighting replaces a reduced one
    census.mark(0, 0, LOCAL)  # ... but never another local one
    assert census.found() and census.entries() == [(1, 2, 1, LOCAL)]
    census.regroup(0, 2)
    assert census.array.tolist() == [1, 3, 2, LOCAL, 0, 0, 0]
    assert census.entries() == [(0, 2, 1, LOCAL)]
