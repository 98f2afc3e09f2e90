"""Module hooks as torch's: forward pre/post (with_kwargs, prepend, always_call) and the full
backward hooks' ``grad_input``/``grad_output`` contract, compared with torch on the same model."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp

torch = torch_oracle()


class Scale:
    """``forward(x, scale=1.0)``, one class body for both libraries."""

    @staticmethod
    def build(T):
        class _Scale(T.nn.Module):
            def forward(self, x, scale=1.0):
                return x * scale

        return _Scale()


@pytest.mark.parametrize("lib", ["ddp", "torch"])
def test_forward_hooks_with_kwargs_prepend_and_removal(lib):
    T = ddp if lib == "ddp" else torch
    m = Scale.build(T)
    calls = []

    def pre(mod, args, kwargs):
        calls.append("pre-kw")
        return (args[0] + 1,), {"scale": kwargs.get("scale", 1.0) * 10}

    h1 = m.register_forward_pre_hook(pre, with_kwargs=True)
    m.register_forward_pre_hook(lambda mod, args: calls.append("pre-first"), prepend=True)
    m.register_forward_hook(lambda mod, args, kwargs, out: out + kwargs["scale"],
                            with_kwargs=True)
    m.register_forward_hook(lambda mod, args, out: calls.append(("post", args[0].tolist())))
    out = m(T.tensor([1.0, 2.0]), scale=2.0)
    assert out.tolist() == [60.0, 80.0]  # (x + 1) * 20 + 20
    assert calls == ["pre-first", "pre-kw", ("post", [2.0, 3.0])]
    h1.remove()
    assert m(T.tensor([1.0]), scale=2.0).tolist() == [4.0]  # 1 * 2 + 2
    bad = Scale.build(T)
    bad.register_forward_pre_hook(lambda mod, args, kwargs: 3, with_kwargs=True)
    with pytest.raises(RuntimeError, match="forward pre-hook must return None or a tuple"):
        bad(T.tensor([1.0]))


@pytest.mark.parametrize("lib", ["ddp", "torch"])
def test_always_call_forward_hook_runs_when_forward_raises(lib):
    T = ddp if lib == "ddp" else torch
    m = Scale.build(T)
    seen = []
    m.register_forward_hook(lambda mod, args, out: seen.append(out), always_call=True)
    m.register_forward_hook(lambda mod, args, out: seen.append("plain"))
    m.register_forward_pre_hook(lambda mod, args: (_ for _ in ()).throw(KeyError("boom")))
    with pytest.raises(KeyError, match="boom"):
        m(T.tensor([1.0]))
    assert seen == [None]


def _backward_record(T, weight, bias, x_array, hooks):
    lin = T.nn.Linear(3, 2)
    with T.no_grad():
        lin.weight.copy_(T.tensor(weight))
        lin.bias.copy_(T.tensor(bias))
    record = []
    for kind, fn in hooks:
        if kind == "pre":
            lin.register_full_backward_pre_hook(fn(record))
        else:
            lin.register_full_backward_hook(fn(record))
    x = T.tensor(x_array, requires_grad=True)
    out = lin(x)
    (out * T.tensor([[1.0, -2.0]])).sum().backward()
    return record, x.grad.numpy(), lin.weight.grad.numpy()


def _shapes(ts):
    return [None if t is None else list(t.shape) for t in ts]


def test_full_backward_hooks_match_torch():
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((2, 3)), rng.standard_normal(2)
    x = rng.standard_normal((4, 3))

    def observe(record):
        def hook(mod, grad_input, grad_output):
            record.append(("full", _shapes(grad_input), _shapes(grad_output),
                           grad_input[0].numpy().copy(), grad_output[0].numpy().copy()))
        return hook

    def double_input(record):
        return lambda mod, grad_input, grad_output: (grad_input[0] * 2,)

    def halve_output(record):
        def hook(mod, grad_output):
            record.append(("pre", _shapes(grad_output)))
            return (grad_output[0] * 0.5,)
        return hook

    hooks = [("pre", halve_output), ("full", observe), ("full", double_input)]
    ours = _backward_record(ddp, weight.astype(np.float32), bias.astype(np.float32),
                            x.astype(np.float32), hooks)
    theirs = _backward_record(torch, weight.astype(np.float32), bias.astype(np.float32),
                              x.astype(np.float32), hooks)
    assert [r[:3] for r in ours[0]] == [r[:3] for r in theirs[0]]
    for a, b in zip(ours[0][1][3:], theirs[0][1][3:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6)  # x.grad: doubled, from halved
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-6)  # weight.grad: halved only


@pytest.mark.parametrize("lib", ["ddp", "torch"])
def test_backward_hook_without_input_grad_gets_none(lib):
    T = ddp if lib == "ddp" else torch
    lin = T.nn.Linear(3, 2)
    seen = []
    lin.register_full_backward_hook(
        lambda mod, gi, go: seen.append((gi, [list(g.shape) for g in go])))
    with pytest.warns(UserWarning, match="Full backward hook is firing when gradients are "
                                         "computed with respect to module outputs"):
        lin(T.ones(4, 3)).sum().backward()
    assert seen == [((None,), [[4, 2]])]
    lin.register_full_backward_hook(lambda mod, gi, go: (T.ones(4, 3),))
    with pytest.raises(RuntimeError, match="no input requires gradient should always return "
                                           "None"), pytest.warns(UserWarning):
        lin(T.ones(4, 3)).sum().backward()


def test_backward_hook_wrong_count_and_unsupported_shapes_say_so():
    lin = ddp.nn.Linear(3, 2)
    lin.register_full_backward_hook(lambda mod, gi, go: (gi[0], gi[0]))
    with pytest.raises(RuntimeError, match="invalid number of grad_input, got 2, but expected 1"):
        lin(ddp.ones(1, 3, requires_grad=True)).sum().backward()

    class Two(ddp.nn.Module):
        def forward(self, a, b):
            return a + b

    two = Two()
    two.register_full_backward_hook(lambda mod, gi, go: None)
    a, b = ddp.ones(2, requires_grad=True), ddp.ones(2, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"Two: .* at most one positional input that "
                                                  r"requires grad, got 2"):
        two(a, b)
    assert two(a, ddp.ones(2)).requires_grad  # one input needing grad is fine
    with ddp.no_grad():
        two(a, b)  # no backward, no hook point
