"""GradScaler against torch.amp.GradScaler: the same scale trajectory, skips and parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
import ddp.distributed as dist
from ddp.distributed.optim import ZeroRedundancyOptimizer

torch = torch_oracle()

# Gradients (before scaling) of 12 steps; inf/NaN at some of them.
GRADS = [np.array([0.5, -1.25, 3.0], dtype=np.float32) * (k + 1) for k in range(12)]
GRADS[2][1] = np.inf
GRADS[5][0] = np.nan
GRADS[6][2] = -np.inf


def _run(lib, opt_name: str, **kw):
    p = lib.nn.Parameter(lib.tensor([1.0, 2.0, 3.0]))
    opt = (lib.optim.SGD([p], lr=0.01, momentum=0.9) if opt_name == "sgd"
           else lib.optim.Adam([p], lr=0.01))
    scaler = lib.amp.GradScaler("cpu", **kw)
    trace = []
    for g in GRADS:
        opt.zero_grad()
        scaler.scale(lib.tensor(1.0))  # torch creates its scale here
        with np.errstate(over="ignore", invalid="ignore"):
            p.grad = lib.tensor(g * np.float32(scaler.get_scale()))  # a scaled backward's
        result = scaler.step(opt)
        scaler.update()
        trace.append((scaler.get_scale(), scaler.state_dict()["_growth_tracker"], result))
    return trace, p.detach().numpy()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("kw", [{}, {"init_scale": 8.0, "growth_interval": 2},
                                {"init_scale": 3.0e38, "growth_interval": 1,
                                 "backoff_factor": 0.25, "growth_factor": 4.0}])
def test_trajectory_equals_torch(opt_name, kw):
    mine, theirs = _run(ddp, opt_name, **kw), _run(torch, opt_name, **kw)
    assert [t[:2] for t in mine[0]] == [t[:2] for t in theirs[0]]
    # float32 maths on both sides; a few ulp of the parameters' size after 12 steps.
    np.testing.assert_allclose(mine[1], theirs[1], rtol=1e-5, atol=1e-6)


def test_scaled_backward_and_unscale_before_clipping():
    def run(lib):
        lib.manual_seed(0)
        model = lib.nn.Linear(3, 2)
        model.weight.data = lib.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
        model.bias.data = lib.tensor([0.1, -0.2])
        opt = lib.optim.SGD(model.parameters(), lr=0.1)
        scaler = lib.amp.GradScaler("cpu", init_scale=1024.0)
        x = lib.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])
        loss = (model(x) ** 2).mean()
        scaled = scaler.scale(loss)
        scaled.backward()
        scaler.unscale_(opt)
        norm = lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        return float(scaled.item()), float(norm), model.weight.detach().numpy()

    mine, theirs = run(ddp), run(torch)
    assert math.isclose(mine[0], theirs[0], rel_tol=1e-6)
    assert math.isclose(mine[1], theirs[1], rel_tol=1e-5)
    np.testing.assert_allclose(mine[2], theirs[2], rtol=1e-5, atol=1e-6)


def test_errors_and_state_dict_like_torch():
    for lib in (ddp, torch):
        p = lib.nn.Parameter(lib.ones(2))
        opt = lib.optim.SGD([p], lr=0.1)
        scaler = lib.amp.GradScaler("cpu")
        p.grad = lib.ones(2)
        scaler.scale(lib.tensor(1.0))
        scaler.unscale_(opt)
        with pytest.raises(RuntimeError, match="already been called on this optimizer"):
            scaler.unscale_(opt)
        scaler.step(opt)
        with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
            scaler.step(opt)
        with pytest.raises(RuntimeError, match="unscale_\\(\\) is being called after step"):
            scaler.unscale_(opt)
        scaler.update()
        with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
            scaler.step(opt, closure=lambda: 0.0)
        fresh = lib.amp.GradScaler("cpu")
        fresh.scale(lib.tensor(1.0))
        # torch raises AssertionError; ddp raises RuntimeError (the house rule), same words.
        with pytest.raises((RuntimeError, AssertionError), match="No inf checks were recorded"):
            fresh.update()
        with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
            q = lib.nn.Parameter(lib.ones(2, dtype=lib.float16))
            q.grad = lib.ones(2, dtype=lib.float16)
            fp16 = lib.amp.GradScaler("cpu")
            fp16.scale(lib.tensor(1.0))
            fp16.unscale_(lib.optim.SGD([q], lr=0.1))
    theirs = torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=3).state_dict()
    mine = ddp.amp.GradScaler("cpu")
    mine.load_state_dict(theirs)
    assert mine.state_dict() == theirs
    disabled = ddp.amp.GradScaler(enabled=False)
    assert disabled.state_dict() == {} and disabled.get_scale() == 1.0
    loss = ddp.tensor(2.0)
    assert disabled.scale(loss) is loss


def test_ranks_skip_together_plain_optimizer():
    """No DDP: an inf on rank 1 only still makes every rank skip (the flag is all-reduced)."""
    def fn():
        p = ddp.nn.Parameter(ddp.ones(2))
        opt = ddp.optim.SGD([p], lr=0.5)
        scaler = ddp.amp.GradScaler("cpu", init_scale=2.0)
        grad = [1.0, np.inf] if dist.get_rank() == 1 else [1.0, 1.0]
        p.grad = ddp.tensor(grad)
        assert scaler.step(opt) is None  # skipped on every rank
        scaler.update()
        assert p.tolist() == [1.0, 1.0] and scaler.get_scale() == 1.0

    dist.spawn(fn, 3)


@pytest.mark.parametrize("stage", [1, 2])
def test_ranks_skip_together_zero(stage):
    """ZeRO: each rank unscales its shard; an inf in one rank's shard skips everywhere."""
    def fn():
        rank = dist.get_rank()
        model = ddp.nn.Linear(4, 3)
        opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=stage, lr=0.5)
        scaler = ddp.amp.GradScaler("cpu", init_scale=4.0)
        before = [p.detach().numpy().copy() for p in model.parameters()]
        x = ddp.ones(2, 4) if rank != 1 else ddp.tensor([[np.inf] * 4] * 2)
        scaler.scale(model(x).sum()).backward()
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == 2.0
        for b, p in zip(before, model.parameters(), strict=True):
            np.testing.assert_array_equal(b, p.detach().numpy())
        # A clean step unscales: the update equals plain SGD on the averaged gradient.
        opt.zero_grad()
        scaler.scale(model(ddp.ones(2, 4)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        np.testing.assert_allclose(model.bias.detach().numpy(), before[1] - 0.5 * 2.0,
                                   rtol=0, atol=1e-6)

    dist.spawn(fn, 3)


def test_ranks_skip_together_fully_sharded():
    """fully_shard: each rank unscales its own rows; an inf in rank 1's rows alone skips the
    step on every rank, and a clean step then updates every shard."""
    from ddp.distributed.fsdp import fully_shard

    def fn():
        rank = dist.get_rank()
        ddp.manual_seed(0)
        model = fully_shard(ddp.nn.Linear(4, 6))  # 3 ranks: 2 rows of each parameter apiece
        opt = ddp.optim.SGD(model.parameters(), lr=0.5)
        scaler = ddp.amp.GradScaler("cpu", init_scale=4.0)
        before = [p.to_local().detach().numpy().copy() for p in model.parameters()]
        scaler.scale(model(ddp.ones(2, 4)).sum()).backward()
        if rank == 1:
            with ddp.no_grad():
                model.weight.grad[0, 0] = float("inf")  # in this rank's shard only
        assert scaler.step(opt) is None
        scaler.update()
        assert scaler.get_scale() == 2.0
        for b, p in zip(before, model.parameters(), strict=True):
            np.testing.assert_array_equal(b, p.to_local().detach().numpy())
        opt.zero_grad()
        scaler.scale(model(ddp.ones(2, 4)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        # d(sum)/d(bias) = 2 (the batch); SGD: bias - 0.5 * 2
        np.testing.assert_allclose(model.bias.to_local().detach().numpy(), before[1] - 1.0,
                                   rtol=0, atol=1e-6)

    dist.spawn(fn, 3)
