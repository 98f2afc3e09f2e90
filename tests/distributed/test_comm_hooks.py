"""DDP communication hooks on the threads backend (cases in _comm_hook_cases.py, also MPI)."""

from __future__ import annotations

import pytest

import ddp
import ddp.distributed as dist
from ddp.futures import Future, collect_all, wait_all

from . import _comm_hook_cases as cases


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("comm_mode", ["thread", "nonblocking", "sync"])
def test_allreduce_hook_equals_default(world_size, comm_mode):
    dist.spawn(cases.case_allreduce_hook_equals_default, world_size, args=(comm_mode,))


@pytest.mark.parametrize("world_size", [2, 3])
def test_fp16_compress_hook(world_size):
    dist.spawn(cases.case_fp16_compress_hook, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
def test_bf16_compress_hook(world_size):
    dist.spawn(cases.case_bf16_compress_hook, world_size)


def test_custom_hooks_see_the_buckets():
    dist.spawn(cases.case_custom_hooks_see_the_buckets, 2)


def test_hook_errors():
    dist.spawn(cases.case_hook_errors, 2)


def test_future_contract():
    f = Future()
    assert not f.done()
    chained = f.then(lambda fut: fut.value() * 2)
    with pytest.raises(RuntimeError, match="before the future completed"):
        f.value()
    f.set_result(21)
    assert f.done() and f.wait() == 21 and chained.wait() == 42
    with pytest.raises(RuntimeError, match="only be marked completed once"):
        f.set_result(1)
    bad = Future()
    bad.set_exception(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        bad.then(lambda fut: fut.value()).wait()
    assert wait_all([Future(_complete=lambda: 1), chained]) == [1, 42]
    assert [x.wait() for x in collect_all([chained]).wait()] == [42]


def test_async_all_reduce_future_yields_the_tensor():
    def fn():
        t = ddp.ones(3) * (dist.get_rank() + 1)
        value = dist.all_reduce(t, async_op=True).get_future().wait()
        assert value[0] is t and t.tolist() == [3.0, 3.0, 3.0]

    dist.spawn(fn, 2)
