"""``ddp.autograd.Function`` with torch's contract, and the graph as torch shows it.

Each custom function is written once against the torch API (``T`` is ``ddp`` or ``torch``) and
run in both; the values and gradients of these small float32 computations are exact in both
libraries (clamps, copies, products of two numbers) or within a few float32 ulp (exp).
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp
from ddp.autograd.function import AccumulateGrad, once_differentiable

EPS32 = float(np.finfo(np.float32).eps)


def make_relu(T):
    class MyReLU(T.autograd.Function):  # the torch tutorial's, verbatim
        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            return input.clamp(min=0)

        @staticmethod
        def backward(ctx, grad_output):
            input, = ctx.saved_tensors
            grad_input = grad_output.clone()
            grad_input[input < 0] = 0
            return grad_input

    return MyReLU


def make_exp(T):
    class Exp(T.autograd.Function):  # torch's docs: the saved tensor is the output
        @staticmethod
        def forward(ctx, i):
            result = i.exp()
            ctx.save_for_backward(result)
            return result

        @staticmethod
        def backward(ctx, grad_output):
            result, = ctx.saved_tensors
            return grad_output * result

    return Exp


def make_scale_shift(T):
    class ScaleShift(T.autograd.Function):  # tensors, a constant tensor and a Python number
        @staticmethod
        def forward(ctx, x, w, bias, factor):
            ctx.save_for_backward(x, w)
            ctx.factor = factor
            return (x * w + bias) * factor

        @staticmethod
        def backward(ctx, grad):
            x, w = ctx.saved_tensors
            gx = grad * w * ctx.factor if ctx.needs_input_grad[0] else None
            gw = grad * x * ctx.factor if ctx.needs_input_grad[1] else None
            gb = grad * ctx.factor if ctx.needs_input_grad[2] else None
            return gx, gw, gb, None

    return ScaleShift


def make_split(T):
    class SplitSquare(T.autograd.Function):  # two differentiable outputs
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x, x * 3

        @staticmethod
        def backward(ctx, g_square, g_triple):
            x, = ctx.saved_tensors
            return g_square * 2 * x + g_triple * 3

    return SplitSquare


def _run_both(torch, build, inputs, requires):
    """``build(T, *tensors)`` in ddp and torch: outputs, and leaf gradients of sum(out * w)."""
    results = []
    rng = np.random.default_rng(3)
    weights = None
    for T in (ddp, torch):
        leaves = [T.tensor(a, requires_grad=r) for a, r in zip(inputs, requires, strict=True)]
        outs = build(T, *leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        if weights is None:
            weights = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in outs]
        loss = sum((o * T.tensor(w)).sum() for o, w in zip(outs, weights, strict=True))
        loss.backward()
        results.append(([o.detach().numpy() for o in outs],
                        [None if t.grad is None else t.grad.numpy() for t in leaves]))
    return results


X = np.array([[-1.5, 0.25, 2.0], [0.5, -0.75, -3.0]], np.float32)


def test_tutorial_relu_matches_torch(torch):
    (d_out, d_grads), (t_out, t_grads) = _run_both(
        torch, lambda T, x: make_relu(T).apply(x), [X], [True])
    np.testing.assert_array_equal(d_out[0], t_out[0])
    np.testing.assert_array_equal(d_grads[0], t_grads[0])
    y = make_relu(ddp).apply(ddp.tensor(X, requires_grad=True))
    assert y.grad_fn.name() == "MyReLUBackward" == type(y.grad_fn).__name__
    assert y.requires_grad and not y.is_leaf


def test_saved_output_and_exp_matches_torch(torch):
    (d_out, d_grads), (t_out, t_grads) = _run_both(
        torch, lambda T, x: make_exp(T).apply(x) * 2, [X], [True])
    # exp in float32 is within a few ulp of the truth in either library (docs/testing.md)
    np.testing.assert_allclose(d_out[0], t_out[0], rtol=8 * EPS32)
    np.testing.assert_allclose(d_grads[0], t_grads[0], rtol=16 * EPS32)


def test_non_tensor_arguments_constants_and_needs_input_grad(torch):
    w = np.array([2.0, -1.0, 0.5], np.float32)
    b = np.array([0.25, 0.5, 1.0], np.float32)
    (d_out, d_grads), (t_out, t_grads) = _run_both(
        torch, lambda T, x, w, b: make_scale_shift(T).apply(x, w, b, 4.0),
        [X, w, b], [True, False, True])
    np.testing.assert_array_equal(d_out[0], t_out[0])
    assert d_grads[1] is None and t_grads[1] is None
    for d, t in zip(d_grads, t_grads, strict=True):
        if t is not None:
            np.testing.assert_array_equal(d, t)
    seen = []

    class Probe(ddp.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, n):
            seen.append(ctx.needs_input_grad)
            return a * b

        @staticmethod
        def backward(ctx, g):
            return g, None, None

    Probe.apply(ddp.ones(2, requires_grad=True), ddp.ones(2), 3)
    assert seen == [(True, False, False)]


def test_two_differentiable_outputs_match_torch(torch):
    (d_out, d_grads), (t_out, t_grads) = _run_both(
        torch, lambda T, x: make_split(T).apply(x), [X], [True])
    for d, t in zip(d_out + d_grads, t_out + t_grads, strict=True):
        np.testing.assert_array_equal(d, t)


def test_unused_output_gets_zeros_or_none_without_materialize():
    received = []

    class Two(ddp.autograd.Function):
        @staticmethod
        def forward(ctx, x, materialize):
            ctx.set_materialize_grads(materialize)
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, ga, gb):
            received.append(gb if gb is None else gb.tolist())
            return ga * 2, None

    for materialize in (True, False):
        x = ddp.ones(2, requires_grad=True)
        a, b = Two.apply(x, materialize)
        a.sum().backward()
        assert x.grad.tolist() == [2.0, 2.0]
        assert b.grad_fn.name() == "TwoBackward"
    assert received == [[0.0, 0.0], None]


def test_mark_non_differentiable_output(torch):
    def build(T):
        class MaxIdx(T.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                values, idx = x.max(1)
                ctx.mark_non_differentiable(idx)
                ctx.save_for_backward(x, idx)
                return values, idx

            @staticmethod
            def backward(ctx, g, g_idx):
                x, idx = ctx.saved_tensors
                out = T.zeros_like(x)
                out[T.arange(x.shape[0]), idx] = g
                return out

        return MaxIdx

    results = []
    for T in (ddp, torch):
        x = T.tensor(X, requires_grad=True)
        values, idx = build(T).apply(x)
        assert values.requires_grad and not idx.requires_grad
        (values * T.tensor([1.0, -2.0])).sum().backward()
        results.append((values.detach().numpy(), idx.numpy(), x.grad.numpy()))
    for d, t in zip(*results, strict=True):
        np.testing.assert_array_equal(d, t)


def test_forward_and_backward_run_without_recording():
    modes = []

    class Spy(ddp.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            modes.append(ddp.is_grad_enabled())
            y = x * 2
            assert y.grad_fn is None
            return y

        @staticmethod
        def backward(ctx, g):
            modes.append(ddp.is_grad_enabled())
            return g * 2

    x = ddp.ones(3, requires_grad=True)
    out = Spy.apply(x)
    out.sum().backward()
    assert modes == [False, False]
    assert ddp.is_grad_enabled()
    with ddp.no_grad():
        assert Spy.apply(x).grad_fn is None
    assert Spy.apply(ddp.ones(3)).grad_fn is None  # no input requires grad: no node


def test_setup_context_and_once_differentiable():
    class Cube(ddp.autograd.Function):
        @staticmethod
        def forward(x):
            return x * x * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            (x,) = inputs
            ctx.save_for_backward(x)

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * 3 * x * x

    x = ddp.tensor([1.0, -2.0], requires_grad=True)
    Cube.apply(x).sum().backward()
    assert x.grad.tolist() == [3.0, 12.0]


def test_saved_tensors_freed_after_backward_unless_retained():
    relu = make_relu(ddp)
    x = ddp.tensor(X, requires_grad=True)
    y = relu.apply(x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2.0 * (X > 0))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_gradient_is_summed_to_a_broadcast_input_and_cast_to_its_dtype():
    class Bcast(ddp.autograd.Function):
        @staticmethod
        def forward(ctx, b):
            return b + ddp.zeros(3, 4)

        @staticmethod
        def backward(ctx, g):
            return g.double()  # (3, 4) float64 for a (4,) float32 input

    b = ddp.ones(4, requires_grad=True)
    Bcast.apply(b).sum().backward()
    assert b.grad.dtype == ddp.float32 and b.grad.tolist() == [3.0] * 4


def test_bad_gradients_name_the_function():
    def fn(backward):
        class Bad(ddp.autograd.Function):
            @staticmethod
            def forward(ctx, x, n):
                return x * n

        Bad.backward = staticmethod(backward)
        return Bad

    x = ddp.ones(2, 3, requires_grad=True)
    cases = [
        (lambda ctx, g: g, "BadBackward returned an incorrect number of gradients "
                           r"\(expected 2, got 1\)"),
        (lambda ctx, g: (g, g), "different than None at position 2"),
        (lambda ctx, g: (g[0], None), r"invalid gradient at index 0 - got \[3\] but expected "
                                      r"shape compatible with \[2, 3\]"),
        (lambda ctx, g: (g.numpy(), None), "gradient of type ndarray at position 0"),
    ]
    for backward, message in cases:
        with pytest.raises((RuntimeError, TypeError), match=message):
            fn(backward).apply(x, 2.0).sum().backward()


def test_legacy_use_and_mark_dirty_are_refused():
    relu = make_relu(ddp)
    with pytest.raises(RuntimeError, match="Legacy autograd function"):
        relu()(ddp.ones(2))
    with pytest.raises(RuntimeError, match="subclass"):
        ddp.autograd.Function.apply(ddp.ones(2))

    class Dirty(ddp.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_dirty(x)
            return x

    with pytest.raises(NotImplementedError, match="mark_dirty"):
        Dirty.apply(ddp.ones(2, requires_grad=True) * 1)


def test_custom_function_inside_a_model_trains_like_torch(torch):
    """The tutorial's polynomial fit with the custom Legendre P3, three steps of SGD."""
    def run(T):
        class LegendrePolynomial3(T.autograd.Function):
            @staticmethod
            def forward(ctx, input):
                ctx.save_for_backward(input)
                return 0.5 * (5 * input ** 3 - 3 * input)

            @staticmethod
            def backward(ctx, grad_output):
                input, = ctx.saved_tensors
                return grad_output * 1.5 * (5 * input ** 2 - 1)

        x = T.linspace(-1.0, 1.0, 50, dtype=T.float64)
        y = T.sin(x)
        a, b, c, d = (T.full((), v, dtype=T.float64, requires_grad=True)
                      for v in (0.0, -1.0, 0.0, 0.3))
        for _ in range(3):
            y_pred = a + b * LegendrePolynomial3.apply(c + d * x)
            loss = (y_pred - y).pow(2).sum()
            loss.backward()
            with T.no_grad():
                for p in (a, b, c, d):
                    p -= 5e-3 * p.grad
                    p.grad = None
        return [p.detach().item() for p in (a, b, c, d)]

    # float64 throughout: the two agree to rounding of ~50-term sums
    np.testing.assert_allclose(run(ddp), run(torch), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- the graph as torch shows it
def _chain(t):
    """Names along next_functions[0][0] from ``t.grad_fn`` down to a leaf (the blitz's walk)."""
    names, node = [], t.grad_fn
    while node is not None:
        names.append(node.name())
        edges = node.next_functions
        node = edges[0][0] if edges else None
    return names


def test_next_functions_walk_matches_torch(torch):
    def build(T):
        x = T.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
        w = T.tensor([[0.5, 1.0], [-1.0, 2.0]], requires_grad=True)
        return x, w, (T.relu(x @ w) * 2).sum()

    chains = [_chain(build(T)[2]) for T in (ddp, torch)]
    assert chains[0] == chains[1] == ["SumBackward0", "MulBackward0", "ReluBackward0",
                                      "MmBackward0", "torch::autograd::AccumulateGrad"]
    x, w, loss = build(ddp)
    mm = loss.grad_fn.next_functions[0][0].next_functions[0][0].next_functions[0][0]
    (acc_x, nr_x), (acc_w, nr_w) = mm.next_functions
    assert isinstance(acc_x, AccumulateGrad) and acc_x.variable is x and nr_x == 0
    assert acc_w.variable is w and nr_w == 0
    assert acc_x.next_functions == ()
    assert repr(mm).startswith("<MmBackward0 object at 0x")
    assert repr(acc_x).startswith("<AccumulateGrad object at 0x")


def test_next_functions_of_constants_and_multi_output_custom_functions():
    x = ddp.ones(3, requires_grad=True)
    assert (x * 2).grad_fn.next_functions[1] == (None, 0)
    a, b = make_split(ddp).apply(x)
    total = a + b
    (node_a, nr_a), (node_b, nr_b) = total.grad_fn.next_functions
    assert node_a is node_b and (nr_a, nr_b) == (0, 1)
    assert node_a.name() == "SplitSquareBackward"
    assert node_a.next_functions[0][0].variable is x


def test_the_array_level_base_refuses_subclasses_from_user_code():
    namespace = {"__name__": "user_script"}
    with pytest.raises(TypeError, match=r"subclass ddp.autograd.Function \(torch.autograd"):
        exec("from ddp.autograd.function import Function\n"
             "class Mine(Function):\n    pass\n", namespace)


def test_two_outputs_used_together_and_retained_match_torch(torch):
    results = []
    for T in (ddp, torch):
        x = T.tensor([1.0, 3.0], requires_grad=True)
        a, b = make_split(T).apply(x)
        loss = (a * b).sum() + b.sum()
        loss.backward(retain_graph=True)
        first = x.grad.tolist()
        loss.backward()
        results.append((first, x.grad.tolist()))
    assert results[0] == results[1]
