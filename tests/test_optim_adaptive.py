"""RMSprop, Adagrad and Adadelta: trajectories and state against torch over several steps,
state dicts in torch's layout, hyperparameter errors with torch's messages."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _helpers import torch_oracle
from test_optim import _grad, _run

import ddp
from ddp import optim

torch = torch_oracle()

CONFIGS = [
    ("RMSprop", {}),
    ("RMSprop", {"lr": 0.02, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.05,
                 "maximize": True}),
    ("Adagrad", {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1,
                 "initial_accumulator_value": 0.5, "eps": 1e-8}),
    ("Adagrad", {"lr": 0.05, "maximize": True}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.1}),
    ("Adadelta", {"maximize": True, "rho": 0.95}),
]


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
        state, tstate = opt.state[p], topt.state[tp]
        assert list(state) == list(tstate)  # the same keys in the same order
        for key in tstate:
            expected = np.float32 if key == "step" else dtype
            assert state[key].numpy().dtype == expected, key
            np.testing.assert_allclose(state[key].numpy(), tstate[key].numpy(), rtol=rtol,
                                       atol=rtol * 1e-1, err_msg=key)


@pytest.mark.parametrize("config", [CONFIGS[4], CONFIGS[6], CONFIGS[9]],
                         ids=["RMSprop", "Adagrad", "Adadelta"])
def test_param_groups_and_state_dict_layout_match_torch(config):
    _, opt, history = _run(ddp, config, np.float64, steps=4, groups=True)
    _, topt, thistory = _run(torch, config, np.float64, steps=4, groups=True)
    for mine, ref in zip(history, thistory, strict=True):
        for a, b in zip(mine, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"]) == [0, 1, 2]
    for key in tsd["state"]:
        assert list(sd["state"][key]) == list(tsd["state"][key])
        assert sd["state"][key]["step"].item() == tsd["state"][key]["step"].item()
    for group, tgroup in zip(sd["param_groups"], tsd["param_groups"], strict=True):
        assert group["params"] == tgroup["params"]
        for key, value in group.items():
            assert tgroup[key] == value, key


def test_adagrad_state_exists_before_the_first_step_like_torch():
    a = ddp.zeros(3, requires_grad=True)
    ta = torch.zeros(3, requires_grad=True)
    opt = optim.Adagrad([a], initial_accumulator_value=0.25)
    topt = torch.optim.Adagrad([ta], initial_accumulator_value=0.25)
    assert list(opt.state[a]) == list(topt.state[ta]) == ["step", "sum"]
    assert opt.state[a]["sum"].tolist() == [0.25] * 3
    assert opt.state[a]["step"].numpy().dtype == np.float32
    b = ddp.zeros(2, requires_grad=True)  # a later group: state on its first step
    opt.add_param_group({"params": [b]})
    assert len(opt.state[b]) == 0
    b.grad = ddp.ones(2)
    opt.step()
    assert opt.state[b]["sum"].tolist() == [1.25, 1.25]


@pytest.mark.parametrize("config", [CONFIGS[4], CONFIGS[6], CONFIGS[9]],
                         ids=["RMSprop", "Adagrad", "Adadelta"])
def test_state_dict_round_trip_continues_identically(config):
    params, opt, _ = _run(ddp, config, np.float32, steps=5)
    clones = [ddp.tensor(p.detach().numpy().copy(), requires_grad=True) for p in params]
    name, kwargs = config
    other = getattr(optim, name)(clones, **{**kwargs, "lr": 123.0})
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for step in range(5, 8):
        for k, (p, c) in enumerate(zip(params, clones, strict=True)):
            g = _grad(p.detach().numpy().astype(np.float64), step, k).astype(np.float32)
            p.grad, c.grad = ddp.tensor(g), ddp.tensor(g)
        opt.step()
        other.step()
        for p, c in zip(params, clones, strict=True):
            np.testing.assert_array_equal(p.detach().numpy(), c.detach().numpy())


def test_update_is_in_place_and_keeps_float32():
    for cls in (optim.RMSprop, optim.Adagrad, optim.Adadelta):
        p = ddp.randn(5, requires_grad=True)
        storage = p.array
        opt = cls([p], weight_decay=0.1)
        p.grad = ddp.randn(5)
        opt.step()
        assert p.array is storage and p.dtype == ddp.float32
        assert all(v.dtype == ddp.float32 for v in opt.state[p].values())


INVALID = [
    ("RMSprop", {"lr": -0.1}), ("RMSprop", {"eps": -1.0}), ("RMSprop", {"momentum": -0.5}),
    ("RMSprop", {"weight_decay": -1e-4}), ("RMSprop", {"alpha": -0.9}),
    ("Adagrad", {"lr": -0.1}), ("Adagrad", {"lr_decay": -0.1}),
    ("Adagrad", {"weight_decay": -0.1}), ("Adagrad", {"initial_accumulator_value": -1.0}),
    ("Adagrad", {"eps": -1e-10}),
    ("Adadelta", {"lr": -1.0}), ("Adadelta", {"rho": 1.5}), ("Adadelta", {"rho": -0.1}),
    ("Adadelta", {"eps": -1e-6}), ("Adadelta", {"weight_decay": -0.1}),
]


@pytest.mark.parametrize("name,kwargs", INVALID, ids=lambda v: str(v))
def test_invalid_hyperparameters_raise_torchs_message(name, kwargs):
    with pytest.raises(ValueError) as expected:
        getattr(torch.optim, name)([torch.zeros(1, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        getattr(optim, name)([ddp.zeros(1, requires_grad=True)], **kwargs)


def _to_ddp(value):
    return ddp.tensor(value.numpy().copy()) if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("config", [CONFIGS[4], CONFIGS[6], CONFIGS[9]],
                         ids=["RMSprop", "Adagrad", "Adadelta"])
def test_a_torch_state_dict_loads_and_the_trajectories_continue_together(config):
    theirs, topt, _ = _run(torch, config, np.float64, steps=3)
    tsd = topt.state_dict()
    sd = {"state": {k: {n: _to_ddp(v) for n, v in s.items()} for k, s in tsd["state"].items()},
          "param_groups": [dict(g) for g in tsd["param_groups"]]}
    ours = [ddp.tensor(p.detach().numpy().copy(), requires_grad=True) for p in theirs]
    name, kwargs = config
    opt = getattr(optim, name)(ours, **kwargs)
    opt.load_state_dict(sd)
    assert opt.state[ours[0]]["step"].numpy().dtype == np.float32
    for step in range(3, 7):
        for k, (p, tp) in enumerate(zip(ours, theirs, strict=True)):
            g = _grad(tp.detach().numpy(), step, k)
            p.grad, tp.grad = ddp.tensor(g), torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-10)
