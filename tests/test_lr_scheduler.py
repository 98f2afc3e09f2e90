"""Learning-rate schedulers: the same float sequences as torch's, state dicts, warnings."""

from __future__ import annotations

import io
import warnings

import pytest
from _helpers import torch_oracle

import ddp
from ddp import optim
from ddp.optim import lr_scheduler

torch = torch_oracle()


def _warm(step: int) -> float:
    return 0.5 ** (step // 3) if step < 12 else 1.0 / (step + 1)


SCHEDULERS = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=6, eta_min=0.001),
    "CosineAnnealingLR-no-min": lambda m, o: m.CosineAnnealingLR(o, T_max=4),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lr_lambda=_warm),
    "LambdaLR-per-group": lambda m, o: m.LambdaLR(o, [_warm, lambda s: 1.0 / (1 + s)]),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=7),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=4),
            m.CosineAnnealingLR(o, T_max=8, eta_min=1e-4)], milestones=[4]),
    "SequentialLR-three": lambda m, o: m.SequentialLR(
        o, [m.ExponentialLR(o, gamma=0.7), m.StepLR(o, step_size=2),
            m.CosineAnnealingLR(o, T_max=3)], milestones=[3, 8]),
}


def _optimizer(module):
    a = module.zeros(2, requires_grad=True)
    b = module.zeros(3, requires_grad=True)
    opt = module.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.03}], lr=0.1,
                           momentum=0.9)
    return opt


def _sequence(module, make, steps=25):
    opt = _optimizer(module)
    sched = make(module.optim.lr_scheduler, opt)
    lrs = [sched.get_last_lr()]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == lrs[-1]
    return lrs


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_sequence_equals_torch(name):
    ours = _sequence(ddp, SCHEDULERS[name])
    theirs = _sequence(torch, SCHEDULERS[name])
    assert ours == theirs  # the same floats, not merely close


def test_initial_lr_recorded_and_last_epoch_counts():
    opt = _optimizer(ddp)
    sched = lr_scheduler.StepLR(opt, step_size=2)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.03]
    assert sched.last_epoch == 0 and sched.base_lrs == [0.1, 0.03]
    for _ in range(3):
        opt.step()
        sched.step()
    assert sched.last_epoch == 3


@pytest.mark.parametrize("name", ["CosineAnnealingLR", "MultiStepLR", "SequentialLR",
                                  "LambdaLR", "LinearLR"])
def test_state_dict_round_trip_continues_identically(name):
    opt = _optimizer(ddp)
    sched = SCHEDULERS[name](lr_scheduler, opt)
    for _ in range(5):
        opt.step()
        sched.step()
    saved_sched, saved_opt = sched.state_dict(), opt.state_dict()
    assert "optimizer" not in saved_sched
    expected = []
    for _ in range(6):
        opt.step()
        sched.step()
        expected.append(sched.get_last_lr())

    buf = io.BytesIO()  # through a checkpoint file, as a training job resumes
    ddp.save({"sched": saved_sched, "opt": saved_opt}, buf)
    buf.seek(0)
    checkpoint = ddp.load(buf)
    opt2 = _optimizer(ddp)
    sched2 = SCHEDULERS[name](lr_scheduler, opt2)
    opt2.load_state_dict(checkpoint["opt"])
    sched2.load_state_dict(checkpoint["sched"])
    got = []
    for _ in range(6):
        opt2.step()
        sched2.step()
        got.append(sched2.get_last_lr())
    assert got == expected


def test_resume_needs_initial_lr():
    opt = _optimizer(ddp)
    with pytest.raises(KeyError, match=r"initial_lr.*param_groups\[0\]"):
        lr_scheduler.StepLR(opt, step_size=2, last_epoch=3)


def test_warns_when_stepped_before_optimizer():
    opt = _optimizer(ddp)
    sched = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        sched.step()
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()


def test_invalid_arguments():
    opt = _optimizer(ddp)
    with pytest.raises(TypeError, match="list is not an Optimizer"):
        lr_scheduler.StepLR([], step_size=1)
    with pytest.raises(ValueError, match="Starting multiplicative factor"):
        lr_scheduler.LinearLR(opt, start_factor=0)
    with pytest.raises(ValueError, match="Expected 2 lr_lambdas, but got 1"):
        lr_scheduler.LambdaLR(opt, [lambda s: 1.0])
    with pytest.raises(ValueError, match="number of milestones to be equal to 2"):
        lr_scheduler.SequentialLR(opt, [lr_scheduler.StepLR(opt, 1)], milestones=[1, 2])
    other = optim.SGD([ddp.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="same optimizer"):
        lr_scheduler.SequentialLR(opt, [lr_scheduler.StepLR(other, 1)], milestones=[])


def _order_warnings(module, sequence: str) -> list[bool]:
    """Run ``sequence`` ('o': optimizer.step, 'a'/'b': create scheduler a/b, 'A'/'B': step it)
    and record, per scheduler step, whether the wrong-order warning was raised."""
    opt = _optimizer(module)
    scheds, warned = {}, []
    for op in sequence:
        if op == "o":
            opt.step()
        elif op.islower():
            scheds[op] = module.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                scheds[op.lower()].step()
            warned.append(any("before `optimizer.step()`" in str(w.message) for w in caught))
    return warned


@pytest.mark.parametrize("sequence", ["aA", "aoA", "oaA", "aoAbB", "aboBA", "aAoAbB"])
def test_wrong_order_warning_matches_torch(sequence):
    """Only optimizer steps after the first scheduler was attached count, for all schedulers of
    that optimizer (torch records them on the optimizer)."""
    assert _order_warnings(ddp, sequence) == _order_warnings(torch, sequence)
