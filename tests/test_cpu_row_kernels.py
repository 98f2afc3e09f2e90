"""Layer norm, softmax, softmax + NLL, Adam/AdamW and GELU's backward on both kernel paths
(``kernel_path``: the NumPy reference and the numba-compiled ``ddp.kernels.cpu``), against
float64 truth, torch, and the reference's handling of infs and NaNs."""

import numpy as np
import pytest
from _helpers import EPS32, assert_within

import ddp
from ddp import kernels
from ddp.kernels import reference

# Rows of odd width and a ragged count, so blocks of rows split unevenly over two threads.
ROWS, WIDTH = 1031, 257


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr("ddp.kernels.parallel.MIN_PER_THREAD", 1 << 12)


def _rows(seed=0, rows=ROWS, width=WIDTH, scale=3.0, shift=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, width)) * scale + shift).astype(np.float32)


def _layer_norm64(x, w, b, g):
    """float64 truth: (out, dx, dw, db) of layer norm over the rows of x."""
    x, w, b, g = (np.asarray(a, np.float64) for a in (x, w, b, g))
    mean = x.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + 1e-5)
    xhat = (x - mean) * rstd
    gh = g * w
    dx = rstd * (gh - gh.mean(axis=1, keepdims=True)
                 - xhat * (gh * xhat).mean(axis=1, keepdims=True))
    return xhat * w + b, dx, (g * xhat).sum(axis=0), g.sum(axis=0)


# Layer norm, forward: xhat in float32 is within a few eps of its value (the mean and variance
# carry a few eps relative to the row's spread, whatever their accumulator), and the affine
# map adds a rounding of each term: 8 eps * (|xhat * w| + |b| + |w|) bounds both paths (measured
# below 2). Backward: dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), three terms each of
# a few eps of its size: 8 eps * rstd * (|gh| + |mean gh| + |xhat mean(gh xhat)|).
LN_BOUND = 8.0


def test_layer_norm_vs_float64_truth(kernel_path, two_threads):
    rng = np.random.default_rng(1)
    x = _rows()
    w = rng.standard_normal(WIDTH).astype(np.float32)
    b = rng.standard_normal(WIDTH).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    out, xhat, rstd = kernels.layer_norm_forward(x, w, b, 1e-5)
    dx = kernels.layer_norm_backward_input(g, xhat, rstd, w)
    out64, dx64, _, _ = _layer_norm64(x, w, b, g)
    xhat64 = (out64 - b) / w
    assert out.dtype == dx.dtype == np.float32
    assert_within(out, out64, LN_BOUND * EPS32 * (np.abs(xhat64 * w) + np.abs(b) + np.abs(w)),
                  "layer norm forward")
    rstd64 = 1.0 / np.std(x.astype(np.float64), axis=1, keepdims=True)
    gh = np.abs(g * w.astype(np.float64))
    scale = gh + gh.mean(axis=1, keepdims=True) + np.abs(xhat64) * gh.mean(axis=1, keepdims=True)
    assert_within(dx, dx64, LN_BOUND * EPS32 * rstd64 * scale, "layer norm backward")


def test_layer_norm_module_vs_torch(kernel_path, torch):
    rng = np.random.default_rng(2)
    x = _rows(rows=64, width=WIDTH)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(WIDTH).astype(np.float32)
    b = rng.standard_normal(WIDTH).astype(np.float32)
    d = ddp.tensor(x, requires_grad=True)
    dw, db = ddp.tensor(w, requires_grad=True), ddp.tensor(b, requires_grad=True)
    ddp.nn.functional.layer_norm(d, (WIDTH,), dw, db).backward(ddp.tensor(g))
    t = torch.tensor(x, requires_grad=True)
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    torch.nn.functional.layer_norm(t, (WIDTH,), tw, tb).backward(torch.tensor(g))
    out64, dx64, dw64, db64 = _layer_norm64(x, w, b, g)
    # Each library within the float64 truth's bound (LN_BOUND for ddp, the same for torch's
    # float32 kernel): the two within twice it, taken relative to the largest term.
    for ours, theirs, truth, what in ((d.grad.numpy(), t.grad.numpy(), dx64, "dx"),
                                      (dw.grad.numpy(), tw.grad.numpy(), dw64, "dweight"),
                                      (db.grad.numpy(), tb.grad.numpy(), db64, "dbias")):
        bound = 2 * LN_BOUND * EPS32 * np.abs(truth).max() * (1 if what == "dx" else x.shape[0])
        assert_within(ours, theirs, bound, what)


def _softmax64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _causal_scores(rows=512, width=128, seed=3):
    """Attention scores with the GPT's causal mask: row i keeps columns <= i % width."""
    x = _rows(seed, rows, width, scale=4.0, shift=0.0)
    keep = np.arange(width)[None, :] <= (np.arange(rows) % width)[:, None]
    return np.where(keep, x, np.float32(-np.inf)).astype(np.float32)


# Softmax, forward: the float32 shift x - max rounds by half an ulp of |x - max|, which exp
# turns into that much relative error; exp itself is within 5 ulp (ddp.kernels.cpu._exp;
# NumPy's within 1), the row sum and the division a few ulp more: 8 eps * (1 + |x - max|)
# relative to each probability. Backward: y * (g - y.g), the dot product rounds by ~eps per
# term relative to sum |g y|: 8 eps * y * (|g| + sum |g y|) (plus the forward's error of y).
SOFTMAX_BOUND = 8.0


def _shift(x):
    """1 + |x - max| per element: the forward bound's factor (0 where x is -inf)."""
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(1.0 + np.abs(x - x.max(axis=1, keepdims=True)), posinf=0.0)


def test_softmax_causal_vs_float64_truth(kernel_path, two_threads):
    x = _causal_scores()
    g = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    y = kernels.softmax_forward(x)
    dx = kernels.softmax_backward(g, y)
    y64 = _softmax64(x)
    assert_within(y, y64, SOFTMAX_BOUND * EPS32 * y64 * _shift(x), "softmax forward")
    assert (y[x == -np.inf] == 0).all()
    gy = g.astype(np.float64) * y64
    dx64 = y64 * (g - gy.sum(axis=1, keepdims=True))
    bound = SOFTMAX_BOUND * EPS32 * y64 * _shift(x) * (
        np.abs(g) + np.abs(gy).sum(axis=1, keepdims=True))
    assert_within(dx, dx64, bound, "softmax backward")


def test_softmax_non_finite_rows_match_the_reference(kernel_path):
    x = _causal_scores(rows=256)
    x[0] = -np.inf  # a fully masked row: NaN, as in torch
    x[1, 0] = np.nan
    x[2, 0] = np.inf
    x[3, 5] = np.nan  # NaN after the first element
    y = kernels.softmax_forward(x)
    expected = reference.softmax_forward(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[:4]).all(axis=1).all()
    finite = ~np.isnan(expected)
    assert_within(y[finite], expected[finite],
                  2 * SOFTMAX_BOUND * EPS32 * (expected * _shift(x))[finite], "finite rows")


def test_masked_softmax_vs_torch(kernel_path, torch):
    x = _causal_scores(rows=256)
    g = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    d = ddp.tensor(x, requires_grad=True)
    ddp.softmax(d, dim=-1).backward(ddp.tensor(g))
    t = torch.tensor(x, requires_grad=True)
    ty = torch.softmax(t, dim=-1)
    ty.backward(torch.tensor(g))
    y64 = _softmax64(x)
    assert_within(ddp.softmax(ddp.tensor(x), dim=-1).numpy(), ty.detach().numpy(),
                  2 * SOFTMAX_BOUND * EPS32 * y64 * _shift(x), "softmax vs torch")
    gy = np.abs(g * y64).sum(axis=1, keepdims=True)
    assert_within(d.grad.numpy(), t.grad.numpy(),
                  2 * SOFTMAX_BOUND * EPS32 * y64 * _shift(x) * (np.abs(g) + gy),
                  "softmax grad vs torch")


def test_cross_entropy_vs_float64_truth_and_torch(kernel_path, two_threads, torch):
    x = _rows(6, rows=2048 + 3, width=96)
    target = np.random.default_rng(7).integers(0, 96, x.shape[0])
    d = ddp.tensor(x, requires_grad=True)
    loss = ddp.nn.functional.cross_entropy(d, ddp.tensor(target))
    loss.backward()
    p64 = _softmax64(x)
    nll64 = -np.log(p64[np.arange(x.shape[0]), target])
    grad64 = p64.copy()
    grad64[np.arange(x.shape[0]), target] -= 1
    grad64 /= x.shape[0]
    # The mean NLL: log-sum-exp within a few eps of its size (<= log C + spread of a row),
    # relative to the mean loss; the gradient: the softmax bound, over the batch.
    assert abs(loss.item() - nll64.mean()) <= 16 * EPS32 * (nll64.mean() + np.log(96))
    bound = SOFTMAX_BOUND * EPS32 * (p64 * _shift(x) + 1) / x.shape[0]
    assert_within(d.grad.numpy(), grad64, bound, "cross entropy grad")
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(t, torch.tensor(target)).backward()
    assert_within(d.grad.numpy(), t.grad.numpy(), 2 * bound, "grad vs torch")


def test_softmax_nll_non_finite_logits_match_the_reference(kernel_path):
    x = _rows(8, rows=64, width=96)
    x[0, 3] = np.nan
    x[1, :] = -np.inf
    x[2, 7] = np.inf
    target = np.arange(64) % 96
    prob, nll = kernels.softmax_nll(x, target)
    prob_ref, nll_ref = reference.softmax_nll(x, target)
    np.testing.assert_array_equal(np.isnan(prob), np.isnan(prob_ref))
    np.testing.assert_array_equal(np.isnan(nll), np.isnan(nll_ref))
    assert np.isnan(nll[:3]).all()


def test_gelu_backward_non_finite_matches_the_reference(kernel_path):
    x = np.linspace(-12, 12, 4099, dtype=np.float32)
    x[:4] = [np.inf, -np.inf, np.nan, 0.0]
    g = np.ones_like(x)
    y, saved = kernels.gelu_forward(x, "none")
    dx = kernels.gelu_backward(g, x, saved, "none")
    expected = reference.gelu_backward(g, x, reference.gelu_forward(x, "none")[1], "none")
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(expected))
    finite = ~np.isnan(expected)
    # both within GELU's backward bound (tests/_helpers.py: 4 eps * |grad|) of the truth
    assert_within(dx[finite], expected[finite], 8 * EPS32 * g[finite], "finite")


def test_vectorised_exp_within_five_ulp():
    from ddp.kernels.cpu._exp import exp_nonpositive_float32

    a = -np.linspace(0.0, 87.2, 20001).astype(np.float32)
    got = np.array([exp_nonpositive_float32(v) for v in a[::40]], dtype=np.float64)
    truth = np.exp(a[::40].astype(np.float64))
    assert_within(got, truth, 5 * 2.0**-24 * 2 * truth, "exp")  # 5 ulp (ulp <= 2^-23 x)
    specials = [exp_nonpositive_float32(np.float32(v)) for v in (-np.inf, -90.0, 0.0)]
    assert specials == [0.0, 0.0, 1.0]
    assert np.isnan(exp_nonpositive_float32(np.float32(np.nan)))


ADAM_CASES = [
    dict(weight_decay=0.0, decoupled=False, maximize=False),
    dict(weight_decay=0.1, decoupled=True, maximize=False),  # AdamW
    dict(weight_decay=0.01, decoupled=False, maximize=True),  # L2, maximize
]


@pytest.mark.parametrize("case", ADAM_CASES)
def test_adam_update_vs_float64_reference(kernel_path, two_threads, case):
    rng = np.random.default_rng(9)
    shapes = [(300, 70), (7,), (64, 257)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    state = [[np.zeros(s, np.float32) for s in shapes] for _ in range(2)]
    p64 = [p.astype(np.float64) for p in params]
    s64 = [[np.zeros(s) for s in shapes] for _ in range(2)]
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **case)
    for step in (1, 2, 3):
        kernels.adam_update_multi(params, grads, *state, step=step, **hyper)
        reference.adam_update_multi(p64, [g.astype(np.float64) for g in grads], *s64,
                                    step=step, **hyper)
    # Each step moves a parameter by at most ~lr (Adam's update is m / sqrt(v) <= ~1 in size):
    # its float32 rounding is an ulp of the parameter plus a few eps of lr; three steps.
    for p, truth in zip(params, p64, strict=True):
        assert_within(p, truth, 3 * (EPS32 * np.abs(truth) + 4 * EPS32 * hyper["lr"]), "param")
    # exp_avg_sq sums (1 - beta2) g^2 with g = grad + wd * param rounded to float32: an error of
    # ~eps * (|grad| + wd |param|) in g, twice that relative in each square.
    for ours, truth, g, p in zip(state[1], s64[1], grads, p64, strict=True):
        terms = 3 * (1 - hyper["beta2"]) * (np.abs(g) + hyper["weight_decay"] * np.abs(p)) ** 2
        assert_within(ours, truth, 8 * EPS32 * (truth + terms), "exp_avg_sq")


def test_adam_non_finite_gradient_propagates(kernel_path):
    params = [np.ones(5000, np.float32)]
    grads = [np.ones(5000, np.float32)]
    grads[0][[3, 7]] = [np.inf, np.nan]
    state = [[np.zeros(5000, np.float32)], [np.zeros(5000, np.float32)]]
    kernels.adam_update_multi(params, grads, *state, step=1, lr=1e-3, beta1=0.9, beta2=0.999,
                              eps=1e-8, weight_decay=0.0, decoupled=False, maximize=False)
    assert np.isnan(params[0][[3, 7]]).all()
    assert np.isfinite(np.delete(params[0], [3, 7])).all()


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_optimizers_vs_torch(kernel_path, torch, name):
    rng = np.random.default_rng(10)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(128, 129), (129,)]]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in init] for _ in range(3)]
    ours = [ddp.tensor(p.copy(), requires_grad=True) for p in init]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in init]
    opt = getattr(ddp.optim, name)(ours, lr=1e-2, weight_decay=0.05)
    topt = getattr(torch.optim, name)(theirs, lr=1e-2, weight_decay=0.05)
    for step_grads in grads:
        for p, tp, g in zip(ours, theirs, step_grads, strict=True):
            p.grad = ddp.tensor(g)
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs, strict=True):
        truth = tp.detach().numpy().astype(np.float64)
        # both within the float64 reference's bound above: twice it
        assert_within(p.detach().numpy(), truth,
                      6 * (EPS32 * np.abs(truth) + 4 * EPS32 * 1e-2), name)


def test_compiled_kernel_calls_an_inlined_helper_without_changing_its_module():
    from ddp.kernels import jit
    from ddp.kernels.cpu import _exp, rows

    x = np.array([[0.0, -1.0, -np.inf]], dtype=np.float32)
    out = np.empty_like(x)
    rows._softmax_rows_float32(x, out, 0, 1)
    e = np.exp(np.float64(-1.0))
    np.testing.assert_allclose(out[0], [1 / (1 + e), e / (1 + e), 0.0], rtol=4 * EPS32)
    assert isinstance(rows.exp_nonpositive_float32, jit._Lazy)  # the module keeps the wrapper
    assert rows.exp_nonpositive_float32 is _exp.exp_nonpositive_float32
