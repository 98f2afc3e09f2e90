"""DDP's gradients as bucket views on the GPU path (the CuPy stand-in in CI): ``p.grad`` is a
device array in the bucket, written by backward, averaged in place (threads backend, 2 ranks)."""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.backend import get_array_module
from ddp.nn.parallel import DistributedDataParallel as DDP

pytestmark = pytest.mark.gpu

PER_RANK = 3


def _batch(size: int):
    rng = np.random.default_rng(5)
    return (rng.standard_normal((size * PER_RANK, 6)).astype(np.float32),
            rng.standard_normal((size * PER_RANK, 2)).astype(np.float32))


def _net():
    ddp.manual_seed(0)
    return ddp.nn.Sequential(ddp.nn.Linear(6, 5), ddp.nn.Tanh(), ddp.nn.Linear(5, 2)).cuda()


def _case() -> None:
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = _batch(size)
    model, reference = _net(), _net()
    wrapped = DDP(model, bucket_cap_mb=0.00005)  # several buckets
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for _ in range(2):  # the second backward re-attaches after set_to_none
        for p in list(model.parameters()) + list(reference.parameters()):
            p.grad = None
        loss = ddp.nn.functional.mse_loss(wrapped(ddp.tensor(x[mine]).cuda()),
                                          ddp.tensor(y[mine]).cuda())
        loss.backward()
        ddp.nn.functional.mse_loss(reference(ddp.tensor(x).cuda()),
                                   ddp.tensor(y).cuda()).backward()
        buffers = [b.buffer for b in wrapped.reducer.buckets]
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert get_array_module(p.grad.array) is get_array_module(p.array)  # on the device
            assert any(np.shares_memory(p.grad.array, b) for b in buffers)
            np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.cpu().numpy(), rtol=1e-5,
                                       atol=1e-6)


def test_grads_are_device_bucket_views_and_match_one_process():
    dist.spawn(_case, 2)
