"""DDP communication-hook cases shared by the threads tests and the MPI tests.

Every rank computes the references itself from every rank's data (seeded by rank).
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks
from ddp.futures import Future

from ._ddp_cases import DDP, IN, OUT, loss_of, make_net

PER_RANK = 4


def _data(rank: int, dtype=np.float64):
    rng = np.random.default_rng(7 + rank)
    return (ddp.tensor(rng.standard_normal((PER_RANK, IN)).astype(dtype)),
            ddp.tensor(rng.standard_normal((PER_RANK, OUT)).astype(dtype)))


def _local_grads(rank: int, dtype=ddp.float64) -> list[np.ndarray]:
    model = make_net(0).to(dtype)
    loss_of(model, *_data(rank, np.dtype(str(dtype).split(".")[-1]))).backward()
    return [p.grad.array.copy() for p in model.parameters()]


def _grads_with(hook, comm_mode: str = "thread", dtype=ddp.float64, bucket_cap_mb=0.0003):
    model = DDP(make_net(0).to(dtype), comm_mode=comm_mode, bucket_cap_mb=bucket_cap_mb)
    if hook is not None:
        model.register_comm_hook(None, hook)
    x, y = _data(dist.get_rank(), np.dtype(str(dtype).split(".")[-1]))
    loss_of(model, x, y).backward()
    return [p.grad.array.copy() for p in model.parameters()]


def case_allreduce_hook_equals_default(comm_mode: str) -> None:
    size = dist.get_world_size()
    hooked = _grads_with(default_hooks.allreduce_hook, comm_mode)
    plain = _grads_with(None, comm_mode)
    for h, p in zip(hooked, plain, strict=True):
        # The hook divides before the sum, DDP after it (at a power-of-two size: the same bits).
        np.testing.assert_allclose(h, p, rtol=0, atol=0 if size & (size - 1) == 0 else 1e-15)


def case_fp16_compress_hook() -> None:
    """float32 grads: each rank sends float16(g / N); the sum is rounded in float16."""
    size = dist.get_world_size()
    got = _grads_with(default_hooks.fp16_compress_hook, dtype=ddp.float32)
    every = [_local_grads(r, ddp.float32) for r in range(size)]
    for i, g in enumerate(got):
        parts = [e[i].astype(np.float64) for e in every]
        exact = sum(parts) / size
        # float16 keeps 11 significant bits: one rounding of each g/N and one per addition
        # (N - 1 of them), each at most eps16/2 of the magnitudes involved.
        eps16 = float(np.finfo(np.float16).eps)
        bound = size * eps16 * sum(np.abs(p) for p in parts) / size + 6e-8
        assert np.all(np.abs(g - exact) <= bound), (i, np.max(np.abs(g - exact) / bound))
        assert g.dtype == np.float32
    # ... and it did compress: the result is not the float32 average.
    plain = _grads_with(None, dtype=ddp.float32)
    assert any(not np.array_equal(a, b) for a, b in zip(got, plain, strict=True))


def case_bf16_compress_hook() -> None:
    """float32 grads: each rank sends q_r = bfloat16(bfloat16(g_r) / N); every pairwise sum of
    the reduction is computed in float32 and rounded to bfloat16."""
    size = dist.get_world_size()
    got = _grads_with(default_hooks.bf16_compress_hook, dtype=ddp.float32)
    every = [_local_grads(r, ddp.float32) for r in range(size)]
    bf16 = ddp.bfloat16.np_dtype
    for i, g in enumerate(got):
        assert g.dtype == np.float32
        q = [(e[i].astype(bf16).astype(np.float32) / np.float32(size)).astype(bf16)
             for e in every]
        ref = q[0]
        for part in q[1:]:
            ref = (ref.astype(np.float32) + part.astype(np.float32)).astype(bf16)
        ref = ref.astype(np.float64)
        if size == 2:  # one commutative rounding: the same bits in every backend
            np.testing.assert_array_equal(g, ref)
        else:  # the order of the N - 1 roundings is the backend's: each at most 2**-8 of the
            # partial sum (bfloat16's half-ulp, relative)
            bound = (size - 1) * 2.0 ** -8 * sum(np.abs(p.astype(np.float64)) for p in q)
            assert np.all(np.abs(g - ref) <= bound), (i, np.max(np.abs(g - ref) / bound))
        # ... and it is the average of the rounded gradients: float32's within bfloat16 error
        exact = sum(e[i].astype(np.float64) for e in every) / size
        scale = sum(np.abs(e[i].astype(np.float64)) for e in every) / size
        assert np.all(np.abs(g - exact) <= (size + 1) * 2.0 ** -8 * scale + 1e-30)
    plain = _grads_with(None, dtype=ddp.float32)
    assert any(not np.array_equal(a, b) for a, b in zip(got, plain, strict=True))


def case_custom_hooks_see_the_buckets() -> None:
    """A hook that returns the bucket untouched: no communication, gradients stay local; the
    GradBucket API describes every bucket once, in launch order."""
    rank = dist.get_rank()
    seen = []

    def local_only(state, bucket):
        seen.append((state, bucket.index(), bucket.is_last(), bucket.parameters(),
                     [g.shape for g in bucket.gradients()], bucket.buffer().numel()))
        future = Future()
        future.set_result(bucket.buffer())
        return future

    model = DDP(make_net(0), bucket_cap_mb=0.0003)
    model.register_comm_hook("my state", local_only)
    loss_of(model, *_data(rank)).backward()
    for got, want in zip([p.grad.array for p in model.parameters()], _local_grads(rank),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    assert [s[1] for s in seen] == list(range(len(seen))) and len(seen) > 1
    assert [s[2] for s in seen] == [False] * (len(seen) - 1) + [True]
    assert all(s[0] == "my state" for s in seen)
    params = [p for s in seen for p in s[3]]
    assert sorted(map(id, params)) == sorted(map(id, model.parameters()))
    for s in seen:
        assert [tuple(shape) for shape in s[4]] == [tuple(p.shape) for p in s[3]]
        assert s[5] == sum(p.numel() for p in s[3])


def case_hook_errors() -> None:
    model = DDP(make_net(0))
    with pytest.raises(TypeError, match="must be callable"):
        model.register_comm_hook(None, "not a hook")
    model.register_comm_hook(None, lambda state, bucket: bucket.buffer())  # not a Future
    with pytest.raises(RuntimeError, match="can only be called once"):
        model.register_comm_hook(None, default_hooks.allreduce_hook)
    with pytest.raises(RuntimeError, match=f"failed on rank {dist.get_rank()}.*must return a "
                                           r"ddp.futures.Future"):
        loss_of(model, *_data(dist.get_rank())).backward()
