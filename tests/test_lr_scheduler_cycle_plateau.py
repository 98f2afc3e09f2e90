"""``OneCycleLR`` and ``ReduceLROnPlateau``: the same float sequences as torch's (learning rates
and cycled momenta), state dicts and errors."""

from __future__ import annotations

import pytest
from _helpers import torch_oracle

import ddp
from ddp.optim import lr_scheduler

torch = torch_oracle()


def _optimizer(module, kind: str):
    a = module.zeros(2, requires_grad=True)
    b = module.zeros(3, requires_grad=True)
    groups = [{"params": [a]}, {"params": [b], "lr": 0.03}]
    if kind == "sgd":
        return module.optim.SGD(groups, lr=0.1, momentum=0.9)
    if kind == "adam":
        return module.optim.Adam(groups, lr=0.1, betas=(0.8, 0.99))
    return module.optim.SGD(groups, lr=0.1)  # no momentum


def _momenta(opt) -> list:
    return [g["betas"] if "betas" in g else g.get("momentum") for g in opt.param_groups]


ONE_CYCLE = {
    "cos": ("sgd", {"max_lr": 1.0, "total_steps": 20}),
    "linear": ("sgd", {"max_lr": [1.0, 0.5], "total_steps": 17, "anneal_strategy": "linear"}),
    "three-phase": ("sgd", {"max_lr": 0.8, "total_steps": 23, "three_phase": True,
                            "pct_start": 0.25}),
    "three-phase-linear": ("adam", {"max_lr": 0.8, "total_steps": 15, "three_phase": True,
                                    "anneal_strategy": "linear"}),
    "adam-betas": ("adam", {"max_lr": 0.5, "epochs": 3, "steps_per_epoch": 6,
                            "base_momentum": [0.8, 0.7], "max_momentum": 0.9}),
    "no-momentum-cycling": ("plain", {"max_lr": 0.3, "total_steps": 12,
                                      "cycle_momentum": False, "div_factor": 10.0,
                                      "final_div_factor": 100.0}),
    "pct-start": ("sgd", {"max_lr": 2.0, "total_steps": 10, "pct_start": 0.5}),
}


def _one_cycle_sequence(module, name):
    kind, kwargs = ONE_CYCLE[name]
    opt = _optimizer(module, kind)
    sched = module.optim.lr_scheduler.OneCycleLR(opt, **kwargs)
    total = kwargs.get("total_steps") or kwargs["epochs"] * kwargs["steps_per_epoch"]
    seq = [(sched.get_last_lr(), _momenta(opt))]
    for _ in range(total - 1):
        opt.step()
        sched.step()
        seq.append((sched.get_last_lr(), _momenta(opt)))
        assert [g["lr"] for g in opt.param_groups] == seq[-1][0]
    keys = [{k: g[k] for k in ("initial_lr", "max_lr", "min_lr", "max_momentum",
                               "base_momentum") if k in g} for g in opt.param_groups]
    return seq, keys, sched


@pytest.mark.parametrize("name", sorted(ONE_CYCLE))
def test_one_cycle_lr_and_momentum_sequences_equal_torch(name):
    ours, our_keys, _ = _one_cycle_sequence(ddp, name)
    theirs, their_keys, _ = _one_cycle_sequence(torch, name)
    assert ours == theirs  # the same floats, learning rates and momenta (or betas)
    assert our_keys == their_keys


def test_one_cycle_stepping_past_the_end_raises_like_torch():
    for module in (ddp, torch):
        _, _, sched = _one_cycle_sequence(module, "pct-start")
        sched.step()  # step 10 of total_steps=10 is still allowed (last_epoch == total)
        with pytest.raises(ValueError, match="Tried to step 11 times. The specified number of "
                                             "total steps is 10"):
            sched.step()


@pytest.mark.parametrize("kwargs,message", [
    ({"max_lr": 1.0}, "You must define either total_steps OR"),
    ({"max_lr": 1.0, "total_steps": 0}, "Expected positive integer total_steps, but got 0"),
    ({"max_lr": 1.0, "epochs": 2, "steps_per_epoch": -1}, "positive integer steps_per_epoch"),
    ({"max_lr": 1.0, "total_steps": 5, "pct_start": 1.5}, "between 0 and 1 pct_start"),
    ({"max_lr": 1.0, "total_steps": 5, "anneal_strategy": "exp"}, "one of 'cos' or 'linear'"),
    ({"max_lr": [1.0], "total_steps": 5}, "max_lr must have the same length"),
])
def test_one_cycle_errors_match_torch(kwargs, message):
    for module in (torch, ddp):
        with pytest.raises(ValueError, match=message):
            module.optim.lr_scheduler.OneCycleLR(_optimizer(module, "sgd"), **kwargs)
    for module in (torch, ddp):  # Adagrad has neither momentum nor betas
        opt = module.optim.Adagrad([module.zeros(2, requires_grad=True)])
        with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
            module.optim.lr_scheduler.OneCycleLR(opt, 1.0, 5)


def test_one_cycle_state_dict_round_trip_continues_identically():
    opt = _optimizer(ddp, "sgd")
    fresh = lr_scheduler.OneCycleLR(opt, max_lr=0.8, total_steps=40, three_phase=True)
    opt2 = _optimizer(ddp, "sgd")
    ref = lr_scheduler.OneCycleLR(opt2, max_lr=0.8, total_steps=40, three_phase=True)
    for _ in range(7):
        opt2.step()
        ref.step()
    fresh.load_state_dict(ref.state_dict())
    for group, saved in zip(opt.param_groups, opt2.param_groups, strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
    for _ in range(10):
        opt.step()
        opt2.step()
        fresh.step()
        ref.step()
        assert fresh.get_last_lr() == ref.get_last_lr()
        assert _momenta(opt) == _momenta(opt2)


# ------------------------------------------------------------------------- ReduceLROnPlateau
METRICS = [1.0, 0.9, 0.9, 0.91, 0.9, 0.95, 0.89999, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.75, 0.76,
           0.77, 0.78, 0.79, 0.8, 0.81] + [0.5] * 13

PLATEAU = {
    "defaults": {},
    "patience-2": {"patience": 2, "factor": 0.5},
    "abs": {"patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
    "max": {"mode": "max", "patience": 1, "factor": 0.3},
    "max-abs": {"mode": "max", "patience": 0, "threshold_mode": "abs", "threshold": 0.01},
    "cooldown": {"patience": 1, "cooldown": 3, "factor": 0.5},
    "min-lr": {"patience": 0, "factor": 0.2, "min_lr": [0.01, 0.001]},
    "min-lr-scalar-eps": {"patience": 0, "factor": 0.9, "min_lr": 0.02, "eps": 1e-3},
}


def _plateau_sequence(module, kwargs, as_tensor=False):
    opt = _optimizer(module, "sgd")
    sched = module.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    lrs = [sched.get_last_lr()]
    for value in METRICS:
        opt.step()
        sched.step(module.tensor(value) if as_tensor else value)
        lrs.append(sched.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == lrs[-1]
    return lrs, sched


@pytest.mark.parametrize("name", sorted(PLATEAU))
def test_plateau_lr_sequence_equals_torch(name):
    ours, sched = _plateau_sequence(ddp, PLATEAU[name])
    theirs, tsched = _plateau_sequence(torch, PLATEAU[name])
    assert ours == theirs
    assert len(set(map(tuple, ours))) > 1  # the schedule did reduce
    for key in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
        assert getattr(sched, key) == getattr(tsched, key), key


def test_plateau_takes_a_0d_tensor_metric_and_is_a_scheduler():
    ours, sched = _plateau_sequence(ddp, PLATEAU["patience-2"], as_tensor=True)
    assert ours == _plateau_sequence(torch, PLATEAU["patience-2"])[0]
    assert isinstance(sched, lr_scheduler.LRScheduler)


def test_plateau_state_dict_round_trip():
    _, sched = _plateau_sequence(ddp, PLATEAU["cooldown"])
    other = lr_scheduler.ReduceLROnPlateau(_optimizer(ddp, "sgd"))
    other.load_state_dict(sched.state_dict())
    for key in ("best", "num_bad_epochs", "cooldown_counter", "patience", "factor", "mode"):
        assert getattr(other, key) == getattr(sched, key)


@pytest.mark.parametrize("kwargs,message", [
    ({"factor": 1.0}, "Factor should be < 1.0."),
    ({"mode": "avg"}, "mode avg is unknown!"),
    ({"threshold_mode": "pct"}, "threshold mode pct is unknown!"),
    ({"min_lr": [0.1]}, "expected 2 min_lrs, got 1"),
])
def test_plateau_errors_match_torch(kwargs, message):
    for module in (torch, ddp):
        with pytest.raises(ValueError, match=message):
            module.optim.lr_scheduler.ReduceLROnPlateau(_optimizer(module, "sgd"), **kwargs)
