"""ZeroRedundancyOptimizer on the threads backend (simulated ranks; no MPI needed).

The cases live in ``_zero_cases.py`` and run unchanged under mpiexec (test_zero_mpi.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed.optim import FlatLayout, ZeroRedundancyOptimizer

from . import _zero_cases as cases


def run(fn, world_size: int, *args) -> None:
    dist.spawn(fn, world_size, args=args)


def test_layout_is_exact_and_world_independent():
    shapes = [(7,), (13,), (5, 3), (2,)]
    dtypes = ["float32", "float32", "float32", "float64"]
    layouts = [FlatLayout([f"p{i}" for i in range(4)], shapes, dtypes, [0, 0, 1, 1], n)
               for n in (1, 2, 3, 4)]
    for n, layout in zip((1, 2, 3, 4), layouts, strict=True):
        f32 = layout.buffers["float32"]
        assert (f32.total, f32.shard, f32.padded) == (35, math.ceil(35 / n), math.ceil(35 / n) * n)
        assert [e.offset for e in layout.entries] == [0, 7, 20, 0]
        assert f32.group_ranges() == [(0, 0, 20), (1, 20, 35)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_matches_unsharded(world_size, stage, name):
    run(cases.case_matches_unsharded, world_size, stage, name)


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_is_exactly_one_nth(world_size, stage, name):
    run(cases.case_memory, world_size, stage, name)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_is_global(stage, norm_type):
    run(cases.case_clip, 3, stage, norm_type)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("stage", [1, 2])
def test_nonfinite_agreed(stage):
    run(cases.case_nonfinite, 3, stage)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_consolidate_state_dict(stage, name):
    run(cases.case_consolidate, 3, stage, name)


def test_params_are_views_and_step_allgathers():
    def fn():
        p = ddp.nn.Parameter(ddp.tensor(np.arange(5, dtype=np.float32)))
        opt = ZeroRedundancyOptimizer([p], ddp.optim.SGD, lr=1.0)
        assert p.array.base is opt.flat_params["float32"]
        p.grad = ddp.tensor(np.ones(5, dtype=np.float32))
        opt.step()
        np.testing.assert_array_equal(p.array, np.arange(5) - 1.0)
        with pytest.raises(RuntimeError, match="not been consolidated"):
            opt.state_dict()

    run(fn, 2)


def test_invalid_stage():
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        ZeroRedundancyOptimizer([ddp.nn.Parameter(ddp.zeros(3))], ddp.optim.SGD, stage=3, lr=1)


def test_stage2_hands_over_ddp():
    def fn():
        model = cases.DDP(cases.Net(0))
        opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=2, lr=0.1)
        assert model.reducer.sync_handed_over
        cases.loss_of(model, 0, 8).backward()
        assert all(p.grad is None for p in model.parameters())
        assert opt.memory_bytes()["grads"] == math.ceil(35 / 2) * 4

    run(fn, 2)
