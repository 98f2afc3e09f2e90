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
    run(cases.case_matches_unsharded, world_size, stage, name)  # one bucket


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("stage", [1, 2])
def test_matches_unsharded_small_buckets(world_size, stage):
    run(cases.case_matches_unsharded, world_size, stage, "adamw", 4, True, cases.SMALL)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("wrap", [True, False])
def test_accumulation_and_plain_model(stage, wrap):
    """Two backwards per step, with DDP and on a plain model (ZeRO averages by itself)."""
    # Not bitwise: DDP reduces avg(g1) + g2 on every element, ZeRO sum(g1) + g2 on its pieces.
    run(cases.case_matches_unsharded, 3, stage, "sgd", 3, False, cases.SMALL, wrap, 2)


def test_layout_buckets_split_evenly():
    layout = FlatLayout(["a", "b"], [(7,), (13,)], ["float32"] * 2, [0, 0], 3, 5, 2)
    buf = layout.buffers["float32"]
    assert buf.buckets == [(18, 21), (15, 18), (12, 15), (9, 12), (6, 9), (3, 6), (0, 3)]
    big = FlatLayout(["a", "b"], [(7,), (13,)], ["float32"] * 2, [0, 0], 3, 12, 6)
    assert big.buffers["float32"].buckets == [(15, 21), (3, 15), (0, 3)]
    assert big.buffers["float32"].owned(1, 3) == [(1, 2, 0), (7, 11, 1), (17, 19, 5)]
    assert sum(hi - lo for lo, hi, _ in big.buffers["float32"].owned(2, 3)) == 7


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("stage", [1, 2])
def test_bytes_sent_equal_ddp(world_size, stage, monkeypatch):
    """Count what every collective moves (ring costs) during one step: ZeRO = DDP."""
    from ddp.distributed.process_group import ProcessGroup as group_class

    sent: dict = {}

    def counting(name, cost):
        original = getattr(group_class, name)

        def wrapper(self, *args, **kw):
            config = sent.get(("counting", self.global_ranks[self.rank()]))
            if config is not None:
                key = (config, self.global_ranks[self.rank()])
                sent[key] = sent.get(key, 0.0) + cost(self, *args)
            return original(self, *args, **kw)

        monkeypatch.setattr(group_class, name, wrapper)

    ring = lambda pg: (pg.size() - 1) / pg.size()  # noqa: E731
    counting("allreduce", lambda pg, a, *_: 2 * ring(pg) * a.nbytes)
    counting("reduce_scatter", lambda pg, out, inp, *_: ring(pg) * inp.nbytes)
    counting("allgather", lambda pg, out, inp: ring(pg) * out.nbytes)
    counting("broadcast", lambda pg, a, src: float(a.nbytes))
    run(cases.case_bytes_equal_ddp, world_size, stage, sent)


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
        assert model.reducer.handed_over
        cases.loss_of(model, 0, 8).backward()
        assert all(p.grad is None for p in model.parameters())
        assert opt.memory_bytes()["grads"] == math.ceil(35 / 2) * 4

    run(fn, 2)


def _no_sync_under_zero(stage: int) -> None:
    model = ddp.nn.parallel.DistributedDataParallel(ddp.nn.Linear(3, 2))
    ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=stage, lr=0.1)
    with pytest.raises(RuntimeError, match="ZeroRedundancyOptimizer owns gradient"):
        with model.no_sync():
            pass


@pytest.mark.parametrize("stage", [1, 2])
def test_no_sync_under_zero_is_refused_clearly(stage):
    run(_no_sync_under_zero, 2, stage)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_reduce_dtype_halves_bytes_and_averages_low_precision_grads(world_size, stage,
                                                                    dtype_name):
    dist.spawn(cases.case_reduce_dtype, world_size, args=(stage, dtype_name))


@pytest.mark.parametrize("stage", [1, 2])
def test_reduce_dtype_with_gradient_accumulation(stage):
    dist.spawn(cases.case_reduce_dtype, 3, args=(stage, "float16", 2))


def test_reduce_dtype_must_be_floating():
    with pytest.raises(TypeError, match="reduce_dtype must be a floating ddp dtype"):
        ZeroRedundancyOptimizer(cases.Net(0).parameters(), ddp.optim.SGD, lr=1.0,
                                reduce_dtype=ddp.int32)
