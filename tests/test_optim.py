"""Optimizers: the seed's numbers, every option against torch, state dicts, errors and hooks."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
from ddp import optim

torch = torch_oracle()


# ------------------------------------------------------------------------- the seed's numbers
def test_seed_sgd_step_after_linear_backward():
    x = ddp.tensor([1.0, 2.0], requires_grad=True)
    y = 100 * x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [100.0, 100.0])
    optim.SGD([x], lr=0.001).step()
    np.testing.assert_allclose(x.detach().numpy(), [0.9, 1.9], rtol=1e-6)
    assert x.dtype == ddp.float32


def test_seed_sgd_step_on_polynomial():
    x = ddp.tensor(1.0, requires_grad=True)
    y = ddp.tensor(2.0, requires_grad=True)
    z = 3 * x**2 + y**3
    z.backward()
    assert x.grad.item() == 6.0 and y.grad.item() == 12.0
    optim.SGD([x, y], lr=0.1).step()
    assert x.item() == pytest.approx(0.4) and y.item() == pytest.approx(0.8)


def test_seed_gradients_accumulate_without_zero_grad():
    x = ddp.tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([x], lr=0.0)
    (100 * x).sum().backward()
    (100 * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [200.0, 200.0])
    opt.zero_grad()
    assert x.grad is None


# ------------------------------------------------------------------------- against torch
SHAPES = [(3, 4), (4,), (2, 2)]

CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.5, "maximize": True}),
    ("SGD", {"lr": 0.05, "weight_decay": 0.2, "maximize": True}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "maximize": True, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "maximize": True, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.02, "weight_decay": 0.3, "amsgrad": True}),
    ("AdamW", {"lr": 0.02, "maximize": True}),
]


def _grad(p: np.ndarray, step: int, k: int) -> np.ndarray:
    """A gradient that depends on the current parameter, so trajectories must agree."""
    rng = np.random.default_rng(100 * step + k)
    return np.tanh(3.0 * p) + rng.standard_normal(p.shape)


def _run(module, config, dtype, steps=10, groups=False):
    """Run ``steps`` updates; param k=2 gets no gradient on odd steps (it must be skipped)."""
    rng = np.random.default_rng(0)
    inits = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params = [module.tensor(a.copy(), requires_grad=True) for a in inits]
    name, kwargs = config
    cls = getattr(module.optim, name)
    if groups:
        opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}], **kwargs)
    else:
        opt = cls(params, **kwargs)
    history = []
    for step in range(steps):
        for k, p in enumerate(params):
            if k == 2 and step % 2:
                p.grad = None
                continue
            g = _grad(p.detach().numpy().astype(np.float64), step, k).astype(dtype)
            p.grad = module.tensor(g)
        opt.step()
        history.append([p.detach().numpy().copy() for p in params])
    return params, opt, history


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}{c[1]}")
def test_matches_torch(config, dtype, rtol):
    ours, opt, history = _run(ddp, config, dtype)
    theirs, topt, thistory = _run(torch, config, dtype)
    for step, (mine, ref) in enumerate(zip(history, thistory, strict=True)):
        for k, (a, b) in enumerate(zip(mine, ref, strict=True)):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-1,
                                       err_msg=f"step {step}, param {k}")
    for p, tp in zip(ours, theirs, strict=True):
        assert (p.grad is None) == (tp.grad is None)
        if p.grad is not None:
            np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=rtol, atol=rtol)
        state, tstate = opt.state[p], topt.state[tp]
        assert sorted(state) == sorted(tstate)
        for key in tstate:
            expected = np.float32 if key == "step" else dtype
            assert state[key].numpy().dtype == expected, key
            np.testing.assert_allclose(state[key].numpy(), tstate[key].numpy(), rtol=rtol,
                                       atol=rtol * 1e-1, err_msg=key)


@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[10]], ids=["SGD", "Adam"])
def test_param_groups_match_torch(config):
    _, _, history = _run(ddp, config, np.float64, steps=4, groups=True)
    _, _, thistory = _run(torch, config, np.float64, steps=4, groups=True)
    for mine, ref in zip(history, thistory, strict=True):
        for a, b in zip(mine, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10)


def test_update_is_in_place_and_keeps_float32():
    p = ddp.randn(5, requires_grad=True)
    storage = p.array
    opt = optim.Adam([p], lr=0.1, weight_decay=0.1, amsgrad=True)
    p.grad = ddp.randn(5)
    opt.step()
    assert p.array is storage and p.dtype == ddp.float32
    assert all(v.dtype == ddp.float32 for v in opt.state[p].values())


# ----------------------------------------------------------------------------- state dicts
def test_state_dict_layout_matches_torch():
    ours, opt, _ = _run(ddp, ("Adam", {"amsgrad": True}), np.float64, steps=2, groups=True)
    theirs, topt, _ = _run(torch, ("Adam", {"amsgrad": True}), np.float64, steps=2, groups=True)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"]) == [0, 1, 2]
    for group, tgroup in zip(sd["param_groups"], tsd["param_groups"], strict=True):
        assert group["params"] == tgroup["params"]
        for key, value in group.items():
            assert tgroup[key] == value, key
    assert sd["state"][2]["step"].item() == tsd["state"][2]["step"].item() == 1.0


@pytest.mark.parametrize("config", [CONFIGS[3], CONFIGS[10], CONFIGS[13]],
                         ids=["SGD", "Adam", "AdamW"])
def test_state_dict_round_trip_continues_identically(config):
    params, opt, _ = _run(ddp, config, np.float32, steps=5)
    clones = [ddp.tensor(p.detach().numpy().copy(), requires_grad=True) for p in params]
    name, kwargs = config
    other = getattr(optim, name)(clones, **{**kwargs, "lr": 123.0})
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["lr"] == kwargs.get("lr", 1e-3)
    for step in range(5, 8):
        for k, (p, c) in enumerate(zip(params, clones, strict=True)):
            g = _grad(p.detach().numpy().astype(np.float64), step, k).astype(np.float32)
            p.grad, c.grad = ddp.tensor(g), ddp.tensor(g)
        opt.step()
        other.step()
        for p, c in zip(params, clones, strict=True):
            np.testing.assert_array_equal(p.detach().numpy(), c.detach().numpy())


def test_load_state_dict_copies_state():
    params, opt, _ = _run(ddp, ("Adam", {}), np.float32, steps=1)
    sd = opt.state_dict()
    other = optim.Adam(params)
    other.load_state_dict(sd)
    assert other.state[params[0]]["exp_avg"] is not opt.state[params[0]]["exp_avg"]
    assert other.state[params[0]]["exp_avg"].array is not opt.state[params[0]]["exp_avg"].array


def test_load_state_dict_checks_groups():
    params, opt, _ = _run(ddp, ("SGD", {"momentum": 0.9}), np.float32, steps=1)
    with pytest.raises(ValueError, match="different number of parameter groups: 1 saved, 2"):
        optim.SGD([{"params": params[:1]}, {"params": params[1:]}]).load_state_dict(
            opt.state_dict())
    with pytest.raises(ValueError, match="group 0 has 3 parameters saved and 2 here"):
        optim.SGD(params[:2]).load_state_dict(opt.state_dict())


# ---------------------------------------------------------------------------------- errors
INVALID = [
    ("SGD", {"lr": -0.1}),
    ("SGD", {"lr": 0.1, "momentum": -0.5}),
    ("SGD", {"lr": 0.1, "weight_decay": -1e-4}),
    ("SGD", {"lr": 0.1, "nesterov": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    ("Adam", {"lr": -1.0}),
    ("Adam", {"eps": -1e-8}),
    ("Adam", {"betas": (1.0, 0.999)}),
    ("Adam", {"betas": (-0.1, 0.999)}),
    ("Adam", {"betas": (0.9, 1.5)}),
    ("Adam", {"weight_decay": -0.1}),
    ("AdamW", {"lr": -1.0}),
    ("AdamW", {"betas": (0.9, -0.1)}),
    ("AdamW", {"weight_decay": -0.01}),
]


@pytest.mark.parametrize("name,kwargs", INVALID, ids=lambda v: str(v))
def test_invalid_hyperparameters_raise_torchs_message(name, kwargs):
    with pytest.raises(ValueError) as expected:
        getattr(torch.optim, name)([torch.zeros(1, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        getattr(optim, name)([ddp.zeros(1, requires_grad=True)], **kwargs)


def test_param_errors():
    a = ddp.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors or dicts, but got .*Tensor"):
        optim.SGD(a, lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors, but one of the params is "
                                        "numpy.ndarray"):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([a * 2], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD([{"params": {a}}], lr=0.1)
    opt = optim.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_add_param_group_fills_defaults():
    a, b = ddp.zeros(2, requires_grad=True), ddp.zeros(3, requires_grad=True)
    opt = optim.SGD([a], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": b, "lr": 0.5})
    group = opt.param_groups[1]
    assert group["params"] == [b] and group["lr"] == 0.5 and group["momentum"] == 0.9
    assert set(group) == set(opt.param_groups[0])


# ----------------------------------------------------------------------- zero_grad, closure
def test_zero_grad_in_place_keeps_the_array():
    p = ddp.ones(3, requires_grad=True)
    (2 * p).sum().backward()
    grad = p.grad
    storage = grad.array
    optim.SGD([p], lr=0.1).zero_grad(set_to_none=False)
    assert p.grad is grad and p.grad.array is storage
    np.testing.assert_array_equal(storage, 0.0)


def test_closure_runs_with_grad_and_returns_loss():
    p = ddp.tensor([3.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        calls.append(ddp.is_grad_enabled())
        return loss

    with ddp.no_grad():
        loss = opt.step(closure)
    assert calls == [True]
    assert loss.item() == 9.0
    assert p.item() == pytest.approx(3.0 - 0.1 * 6.0)


def test_step_hooks_run_in_order_and_can_be_removed():
    p = ddp.ones(1, requires_grad=True)
    p.grad = ddp.ones(1)
    opt = optim.Adam([p])
    log = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: log.append(("pre", o is opt)))
    opt.register_step_post_hook(lambda o, args, kwargs: log.append(("post", p.item() < 1)))
    opt.step()
    pre.remove()
    opt.step()
    assert log == [("pre", True), ("post", True), ("post", True)]


def test_state_entries_are_named_as_torch():
    p = ddp.ones(2, requires_grad=True)
    p.grad = ddp.ones(2)
    sgd = optim.SGD([p], lr=0.1, momentum=0.9)
    sgd.step()
    assert list(sgd.state[p]) == ["momentum_buffer"]
    plain = optim.SGD([p], lr=0.1)
    plain.step()
    assert len(plain.state) == 0
