"""Shared test helpers: a finite-difference gradient checker and a torch comparison.

Both take a function of tensors and NumPy inputs, so one expression serves every check::

    from _helpers import check_grad, check_torch   # tests/ is on sys.path (conftest.py)

    def f(T, x, w):                 # T is the module: ddp, or torch
        return T.tanh(x @ w).sum(1)

    check_grad(f, [(3, 4), (4, 2)])      # ddp analytic gradients vs finite differences (float64)
    check_torch(f, [(3, 4), (4, 2)])     # ddp vs torch: values, dtypes and input gradients

The torch oracle is imported in one place, ``torch_oracle()``: where it is missing (or another
version than ``TORCH_VERSION``), tests fail under CI (``CI`` set) or ``DDP_REQUIRE_TORCH=1``, and
skip with the reason elsewhere. Tolerances follow the policy of ``docs/testing.md``.

Inputs are NumPy arrays or shapes (then filled with seeded normal values). Floating inputs
require grad; integer/bool inputs are passed as tensors without grad. A function may return one
tensor or a tuple/list of them; backward runs from ``sum(out_i * w_i)`` with fixed random
weights ``w_i``, so every output element gets a distinct gradient.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import ddp
from ddp.autograd.function import AccumulateGrad

Inputs = Sequence  # of np.ndarray or shape tuples

TORCH_VERSION = "2.13.0"
TORCH_INSTALL = f"pip install torch=={TORCH_VERSION}"
EPS32 = float(np.finfo(np.float32).eps)  # 2**-23: one ulp of 1.0 in float32


def torch_required() -> bool:
    """True under CI (``CI`` set, not ``false``/``0``) or ``DDP_REQUIRE_TORCH=1``."""
    ci = os.environ.get("CI", "").strip().lower()
    return os.environ.get("DDP_REQUIRE_TORCH") == "1" or ci not in ("", "false", "0")


def torch_oracle_problem() -> str | None:
    """Why the torch oracle cannot be used (missing, or not ``TORCH_VERSION``), or None."""
    try:
        import torch
    except ImportError as err:
        return f"torch oracle not installed: {TORCH_INSTALL} ({err})"
    found = torch.__version__.split("+")[0]
    if found != TORCH_VERSION:
        return (f"torch oracle is {torch.__version__}, the tests need {TORCH_VERSION}: "
                f"{TORCH_INSTALL}")
    return None


def torch_oracle():
    """The ``torch`` module, the tests' reference implementation.

    Missing or of another version: the calling test fails when ``torch_required()`` (CI must
    not turn every comparison into a skip), else it skips with the reason. At module level it
    skips (or fails) the whole module.
    """
    problem = torch_oracle_problem()
    if problem is not None:
        if torch_required():
            pytest.fail(f"{problem} (required because CI or DDP_REQUIRE_TORCH=1 is set)",
                        pytrace=False)
        pytest.skip(problem, allow_module_level=True)
    import torch

    return torch


def assert_within(actual, truth, bound, what: str) -> None:
    """Assert ``|actual - truth| <= bound`` element-wise; ``truth`` and ``bound`` in float64.

    The message names the worst element (by error over bound), its input index and the numbers,
    so a failure reads as "ddp is k times outside the float32 error bound at x".
    """
    actual = np.asarray(actual, np.float64)
    truth = np.asarray(truth, np.float64)
    bound = np.broadcast_to(np.asarray(bound, np.float64), truth.shape)
    err = np.abs(actual - truth)
    ratio = err / np.maximum(bound, np.finfo(np.float64).tiny)
    bad = ~(err <= bound)  # NaN counts as outside
    if bad.any():
        k = np.unravel_index(int(np.argmax(np.where(np.isnan(ratio), np.inf, ratio))), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements outside the bound; worst at index "
            f"{k}: got {actual[k]!r}, truth {truth[k]!r}, error {err[k]:.3g} > bound "
            f"{bound[k]:.3g} ({ratio[k]:.3g} times)")


def make_inputs(inputs: Inputs, dtype=np.float64, seed: int = 0, low: float | None = None):
    """Arrays from ``inputs``: shapes become normal samples (or uniform in [low, low+1])."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in inputs:
        if isinstance(spec, np.ndarray):
            arrays.append(spec.astype(dtype) if spec.dtype.kind == "f" else spec)
        elif low is not None:
            arrays.append((low + rng.random(spec)).astype(dtype))
        else:
            arrays.append(rng.standard_normal(spec).astype(dtype))
    return arrays


def _outputs(result) -> list:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _weights(outputs, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(o.shape)) for o in outputs]


def _differentiable(o) -> bool:
    return o.dtype.is_floating_point and o.requires_grad


def _loss(T, outputs, weights):
    total = None
    for o, w in zip(outputs, weights, strict=True):
        if not _differentiable(o):
            continue
        term = (o * T.tensor(w, dtype=o.dtype)).sum()
        total = term if total is None else total + term
    return total


def ddp_forward(fn: Callable, arrays, requires_grad: bool = True):
    """Run ``fn(ddp, *tensors)``; float arrays become leaves requiring grad."""
    tensors = [ddp.tensor(a, requires_grad=requires_grad and a.dtype.kind == "f") for a in arrays]
    return tensors, _outputs(fn(ddp, *tensors))


@contextlib.contextmanager
def strict_grad_dtypes():
    """Fail when a gradient reaching a leaf has another dtype than the leaf (a silent upcast)."""
    original = AccumulateGrad.accumulate

    def accumulate(self, grad, owned):
        assert grad.dtype == self.variable.array.dtype, (
            f"gradient of dtype {grad.dtype} reached a leaf of dtype {self.variable.array.dtype}"
        )
        return original(self, grad, owned)

    AccumulateGrad.accumulate = accumulate
    try:
        yield
    finally:
        AccumulateGrad.accumulate = original


def check_grad(fn: Callable, inputs: Inputs, *, eps: float = 1e-6, atol: float = 1e-5,
               rtol: float = 1e-4, low: float | None = None, seed: int = 0) -> bool:
    """Compare ddp's gradients of ``fn(ddp, *xs)`` with central differences in float64.

    Returns False (checking nothing) when no output is differentiable, True otherwise.
    """
    arrays = make_inputs(inputs, np.float64, seed, low)
    tensors, outputs = ddp_forward(fn, arrays)
    weights = _weights(outputs)
    loss = _loss(ddp, outputs, weights)
    if loss is None:
        return False
    with strict_grad_dtypes():
        loss.backward()

    def value(perturbed) -> float:
        with ddp.no_grad():
            outs = _outputs(fn(ddp, *[ddp.tensor(a) for a in perturbed]))
            pairs = zip(outs, weights, strict=True)
            return float(sum((np.asarray(o.array, np.float64) * w).sum()
                             for o, w in pairs if o.dtype.is_floating_point))

    for i, (t, a) in enumerate(zip(tensors, arrays, strict=True)):
        if a.dtype.kind != "f":
            continue
        numeric = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            plus, minus = a.copy(), a.copy()
            plus[j] += eps
            minus[j] -= eps
            args_p = [plus if k == i else b for k, b in enumerate(arrays)]
            args_m = [minus if k == i else b for k, b in enumerate(arrays)]
            numeric[j] = (value(args_p) - value(args_m)) / (2 * eps)
        analytic = np.zeros_like(a) if t.grad is None else t.grad.numpy()
        np.testing.assert_allclose(analytic, numeric, atol=atol, rtol=rtol,
                                   err_msg=f"gradient of input {i}")
    return True


def check_torch(fn: Callable, inputs: Inputs, torch_fn: Callable | None = None, *,
                dtype=np.float32, atol: float = 1e-5, rtol: float = 1e-4,
                low: float | None = None, seed: int = 0, grad: bool = True) -> None:
    """Build ``fn`` in ddp and ``torch_fn`` (default ``fn``) in torch from the same inputs.

    Compares output shapes, dtypes and values, and (when ``grad``) every input's gradient,
    including that a gradient is None in ddp exactly when it is None in torch.
    """
    torch = torch_oracle()

    torch_fn = torch_fn or fn
    arrays = make_inputs(inputs, dtype, seed, low)
    d_in, d_out = ddp_forward(fn, arrays, grad)
    t_in = [torch.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    t_out = _outputs(torch_fn(torch, *t_in))
    assert len(d_out) == len(t_out), f"{len(d_out)} outputs, torch has {len(t_out)}"
    for k, (d, t) in enumerate(zip(d_out, t_out, strict=True)):
        assert str(d.dtype) == str(t.dtype).replace("torch.", "ddp."), (
            f"output {k}: dtype {d.dtype}, torch {t.dtype}")
        assert tuple(d.shape) == tuple(t.shape), f"output {k}: shape {d.shape}, torch {t.shape}"
        assert d.requires_grad == t.requires_grad, f"output {k}: requires_grad differs"
        np.testing.assert_allclose(d.detach().numpy(), t.detach().numpy(), atol=atol, rtol=rtol,
                                   err_msg=f"output {k}")
    if not grad:
        return
    weights = _weights(t_out)
    d_loss, t_loss = _loss(ddp, d_out, weights), _loss(torch, t_out, weights)
    if t_loss is None:
        assert d_loss is None, "ddp output requires grad where torch's does not"
        return
    with strict_grad_dtypes():
        d_loss.backward()
    t_loss.backward()
    for i, (d, t) in enumerate(zip(d_in, t_in, strict=True)):
        if t.grad is None:
            assert d.grad is None or not d.requires_grad, f"input {i}: torch has no grad"
            continue
        assert d.grad is not None, f"input {i}: ddp has no grad, torch does"
        assert d.grad.dtype == d.dtype, f"input {i}: grad dtype {d.grad.dtype} != {d.dtype}"
        np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(), atol=atol, rtol=rtol,
                                   err_msg=f"gradient of input {i}")


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def gelu_float64(x, approximate: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Ground truth ``(gelu(x), d gelu/dx)`` in float64, independent of ddp's own erf.

    ``none``: ``x/2 * erfc(-x/sqrt(2))`` from Python's ``math.erfc`` (correctly rounded to a few
    ulp of float64, no cancellation in the negative tail); ``tanh``: torch's formula in float64.
    """
    x = np.asarray(x, np.float64)
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        t = np.tanh(c * (x + 0.044715 * x**3))
        dt = (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)
        return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * dt
    cdf = 0.5 * _erfc(-x / math.sqrt(2.0))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return x * cdf, cdf + x * pdf


# Float32 error bounds of GELU, in units of EPS32 (see docs/testing.md for the policy).
# Forward, times |x|: both libraries evaluate x * Phi(x) with Phi = (1 + erf(x/sqrt 2)) / 2 (or
# (1 + tanh(...)) / 2) in float32. Phi lies in [0, 1], so its rounding is absolute, not relative:
# the argument's rounding moves erf by <= 0.24 eps, erf itself is within 4 ulp (<= 2 eps, its
# value being <= 1) and 1 + erf rounds by eps/2, so Phi is within (0.24 + 2 + 0.5) / 2 < 1.4 eps;
# times |x|, plus the product's eps/2 * |y| <= eps/2 * |x|: < 1.9 eps * |x|. Measured on 4e5
# normal * 3 values: 1.08 (erf) and 0.96 (tanh), AVX2 and SSE4.2-only NumPy alike. In the
# negative tail |y| is far below eps * |x|, so no relative bound holds there, for either library.
GELU_DDP_FORWARD = 2.0
# torch's vectorised erf is a polynomial whose error differs per CPU (AVX2, AVX-512 or none):
# measured 2.1 eps * |x| near 0 on AVX2, and up to 1.1e-6 (< 2.3 eps * |x|, |x| >= 4) on AVX-512.
GELU_TORCH_FORWARD = 4.0
# Backward, times |grad|: grad * (Phi + x * pdf). Phi carries the forward's < 1.4 eps; x * pdf
# is <= 0.25 in size, with exp and three products each a few ulp of it (< 1.4 eps in all); the
# sum (<= 1.13) rounds by eps/2 and the product with grad by eps/2 * 1.13: < 3.9 eps * |grad|.
# Measured 1.65 for ddp, 2.2 for torch.
GELU_DDP_BACKWARD = 4.0
GELU_TORCH_BACKWARD = 4.0
