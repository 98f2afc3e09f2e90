"""Fused losses over class indices (cross entropy, NLL) and mean squared error.

Class-index losses take ``(N, C)`` or ``(N, C, d1, ...)`` inputs; the class axis is moved last
and flattened to ``(M, C)`` inside the node, so the graph holds one node per loss.
"""

from __future__ import annotations

from ddp import kernels
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.kernels import reference
from ddp.ops._util import unbroadcast

_REDUCTIONS = ("mean", "sum", "none")


def _flatten_classes(x):
    """``(N, C, d...)`` -> ``(N*d..., C)`` and the per-sample output shape ``(N, d...)``."""
    xp = get_array_module(x)
    if x.ndim == 1:
        return x.reshape(1, -1), ()
    if x.ndim == 2:
        return x, x.shape[:1]
    c = x.shape[1]
    return xp.moveaxis(x, 1, -1).reshape(-1, c), (x.shape[0],) + x.shape[2:]


def _unflatten_classes(g2, x_shape):
    xp = get_array_module(g2)
    if len(x_shape) <= 2:
        return g2.reshape(x_shape)
    moved = g2.reshape((x_shape[0],) + x_shape[2:] + (x_shape[1],))
    return xp.moveaxis(moved, -1, 1)


def _prepare_targets(target, sample_shape, num_classes, ignore_index, weight, dtype):
    """Flat safe targets, per-sample weights (0 where ignored) and the validity mask."""
    xp = get_array_module(target)
    if target.dtype.kind not in "iu":
        raise RuntimeError(
            f"expected target of an integer dtype (class indices), got {target.dtype}"
        )
    if tuple(target.shape) != tuple(sample_shape):
        raise ValueError(
            f"Expected target of shape {tuple(sample_shape)} for input with "
            f"{num_classes} classes, got {tuple(target.shape)}"
        )
    t = target.reshape(-1)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= num_classes))
    if bad.any():
        raise IndexError(
            f"Target {int(t[bad][0])} is out of bounds: expected class indices in "
            f"[0, {num_classes - 1}] (or ignore_index={ignore_index})"
        )
    safe = xp.where(valid, t, 0)
    w_t = valid.astype(dtype) if weight is None else weight[safe] * valid
    return safe, w_t, valid


def _sample_scale(grad, ctx):
    """d(loss)/d(per-sample loss) as a flat array (or a 0-d one for mean/sum)."""
    if ctx.reduction == "mean":
        return grad / ctx.denominator
    if ctx.reduction == "sum":
        return grad
    return grad.reshape(-1)


def _reduce(per_sample, w_t, reduction, sample_shape, ctx):
    if reduction == "none":
        return per_sample.reshape(sample_shape)
    total = per_sample.sum()
    if reduction == "sum":
        return total
    xp = get_array_module(per_sample)
    ctx.denominator = w_t.sum()
    with _errstate(xp):
        return total / ctx.denominator


class CrossEntropy(Function):
    """log-softmax over the class axis and weighted, label-smoothed NLL in one node."""

    backward_name = "NllLossBackward0"  # torch's outermost node (after LogSoftmaxBackward0)

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction, label_smoothing):
        x2, sample_shape = _flatten_classes(x)
        c = x2.shape[1]
        safe, w_t, valid = _prepare_targets(target, sample_shape, c, ignore_index, weight,
                                            x.dtype)
        eps = label_smoothing
        if eps == 0.0:  # the reference on a CPU, one fused launch on a GPU
            e, nll = kernels.softmax_nll(x2, safe)
            per_sample = nll * w_t
        else:  # smoothing also needs the shifted logits: the reference on both devices
            e, nll, shifted, lse = reference.softmax_nll(x2, safe, return_logits=True)
            per_sample = nll * w_t
            if weight is None:
                smooth = c * lse - shifted.sum(axis=1)
            else:
                smooth = lse * weight.sum() - shifted @ weight
            per_sample *= 1.0 - eps
            per_sample += (eps / c) * (smooth * valid)
        ctx.save_for_backward(e, safe, w_t, valid, weight)
        ctx.x_shape = x.shape
        ctx.reduction = reduction
        ctx.eps = eps
        return _reduce(per_sample, w_t, reduction, sample_shape, ctx)

    @staticmethod
    def backward(ctx, grad):
        p, safe, w_t, valid, weight = ctx.saved_tensors
        m, c = p.shape
        xp = get_array_module(p)
        eps = ctx.eps
        scale = _sample_scale(grad, ctx)
        # d/dlogits of sum_c q_c * -log p_c is p * sum(q) - q, with q the smoothed target.
        if weight is None:
            coef = valid.astype(p.dtype)
        else:
            coef = (1.0 - eps) * w_t + (eps / c) * weight.sum() * valid
        coef = coef * scale
        gx = p * coef[:, None]
        gx[xp.arange(m), safe] -= (1.0 - eps) * w_t * scale
        if eps > 0.0:
            spread = (eps / c) * (valid * scale)
            gx -= spread[:, None] if weight is None else spread[:, None] * weight
        return _unflatten_classes(gx, ctx.x_shape), None, None, None, None, None


class NLLLoss(Function):
    """``-weight[t] * input[t]`` per sample over log-probabilities, then reduced."""

    backward_name = "NllLossBackward0"

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction):
        xp = get_array_module(x)
        x2, sample_shape = _flatten_classes(x)
        m, c = x2.shape
        safe, w_t, _ = _prepare_targets(target, sample_shape, c, ignore_index, weight, x.dtype)
        per_sample = -x2[xp.arange(m), safe] * w_t
        ctx.save_for_backward(safe, w_t)
        ctx.x_shape = x.shape
        ctx.x2_shape = x2.shape
        ctx.reduction = reduction
        return _reduce(per_sample, w_t, reduction, sample_shape, ctx)

    @staticmethod
    def backward(ctx, grad):
        safe, w_t = ctx.saved_tensors
        xp = get_array_module(grad)
        m, _ = ctx.x2_shape
        gx = xp.zeros(ctx.x2_shape, dtype=grad.dtype)
        gx[xp.arange(m), safe] = -w_t * _sample_scale(grad, ctx)
        return _unflatten_classes(gx, ctx.x_shape), None, None, None, None


class MSELoss(Function):
    """``(a - b) ** 2`` reduced; broadcasting operands get summed gradients."""

    backward_name = "MseLossBackward0"

    @staticmethod
    def forward(ctx, a, b, reduction):
        diff = a - b
        ctx.save_for_backward(diff)
        ctx.shapes = (a.shape, b.shape)
        ctx.reduction = reduction
        sq = diff * diff
        if reduction == "mean":
            return sq.mean()
        if reduction == "sum":
            return sq.sum()
        return sq

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        factor = grad * 2.0
        if ctx.reduction == "mean":
            factor = factor / diff.size
        g = diff * factor
        sa, sb = ctx.shapes
        ga = unbroadcast(g, sa) if ctx.needs_input_grad[0] else None
        gb = -unbroadcast(g, sb) if ctx.needs_input_grad[1] else None
        return ga, gb, None


class _errstate:
    """Silence 0/0 in a mean over no valid targets: the result is nan, as in torch."""

    def __init__(self, xp):
        self.xp = xp
        self.state = None

    def __enter__(self):
        if hasattr(self.xp, "seterr"):
            self.state = self.xp.seterr(invalid="ignore", divide="ignore")

    def __exit__(self, *exc):
        if self.state is not None:
            self.xp.seterr(**self.state)
        return False
