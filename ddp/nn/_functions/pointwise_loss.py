"""Element-wise losses: binary cross entropy (on probabilities and on logits), smooth L1 and
Huber, Kullback-Leibler divergence. Each node returns the unreduced loss; ``weight`` and the
reduction are applied by ``nn.functional`` with ordinary ops, so their gradients come for free.

The formulas follow torch's CPU kernels, including where they clamp: ``binary_cross_entropy``
clamps both logs to ``>= -100`` and its input gradient's denominator to ``>= 1e-12``.
"""

from __future__ import annotations

import numpy as np

from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import unbroadcast

_BCE_LOG_FLOOR = -100.0  # torch: "clamps its log function outputs to be greater than -100"
# torch's EPSILON in binary_cross_entropy_backward is a float32 constant: 1e-12 rounded to float
_BCE_GRAD_EPS = float(np.float32(1e-12))


def _log_sigmoid(xp, x):
    """``log(sigmoid(x)) = -(max(-x, 0) + log1p(exp(-|x|)))``, finite for any finite ``x``."""
    return -(xp.maximum(-x, 0) + xp.log1p(xp.exp(-xp.abs(x))))


class BinaryCrossEntropy(Function):
    """``-(t * log(x) + (1 - t) * log(1 - x))`` with each log clamped to ``>= -100``; the
    target's gradient ``log(1 - x) - log(x)`` is not clamped (torch's formulas both)."""

    @staticmethod
    def forward(ctx, x, t):
        xp = get_array_module(x)
        with _quiet(xp):  # log(0) = -inf, clamped just below
            log_x = xp.maximum(xp.log(x), _BCE_LOG_FLOOR)
            log_1mx = xp.maximum(xp.log1p(-x), _BCE_LOG_FLOOR)
        ctx.save_for_backward(x, t)
        return (t - 1) * log_1mx - t * log_x

    @staticmethod
    def backward(ctx, grad):
        x, t = ctx.saved_tensors
        xp = get_array_module(grad)
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = grad * (x - t) / xp.maximum((1 - x) * x, _BCE_GRAD_EPS)
        if ctx.needs_input_grad[1]:  # torch does not clamp these logs: +-inf at 0 and 1
            with _quiet(xp):
                gt = grad * (xp.log1p(-x) - xp.log(x))
        return gx, gt


class BinaryCrossEntropyWithLogits(Function):
    """``(1 - t) * x - w_p * log(sigmoid(x))`` with ``w_p = (pos_weight - 1) * t + 1``.

    ``pos_weight`` may be None (``w_p = 1``), else it broadcasts against ``x`` and ``t``; as
    in torch it gets no gradient (``nn.functional`` refuses one that requires grad).
    """

    @staticmethod
    def forward(ctx, x, t, pos_weight):
        xp = get_array_module(x)
        log_sig = _log_sigmoid(xp, x)
        log_weight = 1 if pos_weight is None else (pos_weight - 1) * t + 1
        ctx.save_for_backward(x, t, pos_weight, log_sig)
        return (1 - t) * x - log_weight * log_sig

    @staticmethod
    def backward(ctx, grad):
        x, t, pos_weight, log_sig = ctx.saved_tensors
        xp = get_array_module(grad)
        needs = ctx.needs_input_grad
        log_weight = 1 if pos_weight is None else (pos_weight - 1) * t + 1
        gx = gt = None
        if needs[0]:  # 1 - sigmoid(x) = exp(log_sigmoid(-x)) = exp(log_sig - x)
            g = grad * ((1 - t) - log_weight * xp.exp(log_sig - x))
            gx = unbroadcast(g, x.shape)
        if needs[1]:
            g = -x if pos_weight is None else -x - (pos_weight - 1) * log_sig
            gt = unbroadcast(grad * g, t.shape)
        return gx, gt, None


class SmoothL1(Function):
    """Smooth L1 (``huber=False``: ``0.5 d^2 / beta`` inside ``|d| < beta``, else
    ``|d| - beta / 2``) or Huber (``0.5 d^2`` inside ``|d| < beta``, else
    ``beta * (|d| - beta / 2)``) of ``d = a - b``; ``beta > 0`` here."""

    @staticmethod
    def forward(ctx, a, b, beta, huber):
        xp = get_array_module(a)
        d = a - b
        ad = xp.abs(d)
        inside = ad < beta
        if huber:
            out = xp.where(inside, 0.5 * d * d, beta * (ad - 0.5 * beta))
        else:
            out = xp.where(inside, 0.5 * d * d / beta, ad - 0.5 * beta)
        ctx.save_for_backward(d, inside)
        ctx.beta, ctx.huber, ctx.shapes = beta, huber, (a.shape, b.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        d, inside = ctx.saved_tensors
        xp = get_array_module(grad)
        beta = ctx.beta
        if ctx.huber:
            slope = xp.where(inside, d, beta * xp.sign(d))
        else:
            slope = xp.where(inside, d / beta, xp.sign(d))
        g = grad * slope
        sa, sb = ctx.shapes
        ga = unbroadcast(g, sa) if ctx.needs_input_grad[0] else None
        gb = -unbroadcast(g, sb) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


class KLDiv(Function):
    """Point-wise ``t * (log(t) - x)`` (0 where ``t == 0``), or ``exp(t) * (t - x)`` for a
    ``log_target``; ``x`` holds log-probabilities.

    The target's gradient at ``t == 0`` is NaN, as in torch (whose ``xlogy(t, t)`` backward
    divides ``0 / 0`` there): the derivative ``log(t) + 1`` does not exist at 0.
    """

    @staticmethod
    def forward(ctx, x, t, log_target):
        xp = get_array_module(x)
        if log_target:
            e = xp.exp(t)
            ctx.save_for_backward(x, t, e)
            out = e * (t - x)
        else:
            zero = t == 0
            log_t = xp.log(xp.where(zero, 1, t))  # xlogy(t, t): 0 at t == 0
            ctx.save_for_backward(x, t, log_t, zero)
            out = t * log_t - t * x
        ctx.log_target = log_target
        ctx.shapes = (x.shape, t.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        sx, st = ctx.shapes
        needs = ctx.needs_input_grad
        gx = gt = None
        if ctx.log_target:
            x, t, e = ctx.saved_tensors
            if needs[0]:
                gx = unbroadcast(-grad * e, sx)
            if needs[1]:
                gt = unbroadcast(grad * e * (t - x + 1), st)
        else:
            x, t, log_t, zero = ctx.saved_tensors
            if needs[0]:
                gx = unbroadcast(-grad * t, sx)
            if needs[1]:
                gt = unbroadcast(xp.where(zero, xp.nan, grad * (log_t + 1 - x)), st)
        return gx, gt, None


class _quiet:
    """Silence NumPy's divide-by-zero warning of ``log(0)`` (CuPy never warns)."""

    def __init__(self, xp):
        self.xp = xp
        self.state = None

    def __enter__(self):
        if hasattr(self.xp, "seterr"):
            self.state = self.xp.seterr(divide="ignore")

    def __exit__(self, *exc):
        if self.state is not None:
            self.xp.seterr(**self.state)
        return False
