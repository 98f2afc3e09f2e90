"""Batch normalisation as one graph node, on one process or over the ranks of a process group.

Statistics are per channel (dim 1) over every other dim. With a ``group`` (``SyncBatchNorm``),
the forward all-reduces ``(sum, sum of squares, count)`` of every rank's shard and the backward
all-reduces ``(sum of grad, sum of grad * xhat)``, so N ranks of B samples compute exactly what
one process computes on the N*B samples, also when the ranks hold different batch sizes.

The per-channel passes are ``ddp.kernels.batch_norm_*``: compiled loops on CPU NumPy arrays
(each channel's statistics and normalisation in one visit of its elements), the NumPy reference
elsewhere; this module holds the autograd and the collectives.
"""

from __future__ import annotations

from ddp import kernels
from ddp.autograd.function import Function
from ddp.backend import get_array_module


def _as_ncl(array):
    """``(N, C, L)`` view (or copy) of an ``(N, C, *)`` array; L is 1 for ``(N, C)``."""
    return array.reshape(array.shape[0], array.shape[1], -1)


def _batch_stats(x3, group):
    """``(mean, biased var, count)`` per channel over all ranks of ``group`` (a collective).

    Each rank sends ``(count * mean, M2 + count * mean^2, count)`` in float64, its two-pass
    statistics (``kernels.batch_norm_stats``), so that ``sum(x^2)/n - mean^2`` loses no
    precision to cancellation for data whose mean is large against its spread.
    """
    xp = get_array_module(x3)
    local = x3.shape[0] * x3.shape[2]
    mean64, m2 = kernels.batch_norm_stats(x3)  # zeros for an empty shard, which still joins
    c = x3.shape[1]
    buf = xp.empty(2 * c + 1, dtype=xp.float64)
    buf[:c] = local * mean64
    buf[c:2 * c] = m2 + local * mean64 * mean64
    buf[2 * c] = local
    group.allreduce(buf)  # a collective: every rank of the group runs this forward
    count = int(round(buf[2 * c].item()))
    if count <= 1:
        raise ValueError(
            f"SyncBatchNorm: expected more than 1 value per channel when training over the "
            f"group, got {count} in all (input shape on this rank {tuple(x3.shape)})"
        )
    mean64 = buf[:c] / count
    var64 = xp.maximum(buf[c:2 * c] / count - mean64 * mean64, 0.0)
    return mean64.astype(x3.dtype), var64.astype(x3.dtype), count


def check_inputs(input, running_mean, running_var, weight, bias,  # noqa: A002
                 training: bool, local_count_check: bool = True) -> None:
    """Torch's argument checks of ``batch_norm``, shared by ``F.batch_norm`` and ``SyncBatchNorm``.

    Raises:
        ValueError: a training batch with a single value per channel (``local_count_check``).
        RuntimeError: the input has fewer than 2 dims, is not floating point, a per-channel
            tensor has another size than the ``C`` of ``input.shape[1]``, or evaluation lacks
            running statistics.
    """
    if input.ndim < 2:
        raise RuntimeError(
            f"batch_norm: expected an input of shape (N, C, *) with at least 2 dims, got shape "
            f"{tuple(input.shape)}"
        )
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"batch_norm: expected a floating point input, got {input.dtype}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != c:
            raise RuntimeError(
                f"{name} should contain {c} elements not {t.numel()} (input shape "
                f"{tuple(input.shape)}, {name} shape {tuple(t.shape)})"
            )
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("running_mean and running_var must be defined in evaluation mode")
    if training and local_count_check and input.numel() // max(c, 1) <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size "
            f"ddp.Size({list(input.shape)})"
        )


def _update_running(running, value, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * value``, in place."""
    running *= 1.0 - momentum
    running += (momentum * value).astype(running.dtype)


class BatchNorm(Function):
    """``y = (x - mean) * invstd * weight + bias`` per channel, ``invstd = 1/sqrt(var + eps)``.

    Training: ``mean`` and the biased ``var`` of the batch (all ranks of ``group`` when given),
    and ``running_mean``/``running_var`` (when not None) move towards ``mean`` and the
    *unbiased* variance ``var * n / (n - 1)`` by ``momentum``, in place (torch's rule).
    Evaluation: ``mean`` and ``var`` are the running statistics.

    Backward, with ``xhat = (x - mean) * invstd``, ``g`` the output gradient, ``n`` the count::

        training:  dx = weight * invstd * (g - sum(g) / n - xhat * sum(g * xhat) / n)
        eval:      dx = weight * invstd * g
        dweight = sum(g * xhat),  dbias = sum(g)

    With a group, both sums of the training ``dx`` are all-reduced (one collective, run only when
    the input needs a gradient, as torch); ``dweight``/``dbias`` stay this rank's sums, which
    DDP then averages like any other gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                group):
        x3 = _as_ncl(x)
        xp = get_array_module(x)
        if training and group is None:
            count = x3.shape[0] * x3.shape[2]
            out, xhat, mean, m2, invstd = kernels.batch_norm_train_forward(x3, weight, bias,
                                                                           eps)
            var = m2 / count
        else:
            if training:
                mean, var, count = _batch_stats(x3, group)
            else:
                mean, var, count = running_mean.astype(x.dtype), running_var.astype(x.dtype), 0
            invstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
            out, xhat = kernels.batch_norm_apply(x3, mean, invstd, weight, bias)
        if training and running_mean is not None:
            _update_running(running_mean, mean, momentum)
        if training and running_var is not None:
            _update_running(running_var, var * (count / (count - 1)), momentum)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.meta = (training, count, group, bias is not None)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):
        xhat, invstd, weight = ctx.saved_tensors
        training, count, group, has_bias = ctx.meta
        needs = ctx.needs_input_grad
        g3 = _as_ncl(grad)
        scale = invstd if weight is None else invstd * weight
        gx = None
        if training and group is None:
            gx, sum_dy, sum_dy_xhat = kernels.batch_norm_backward(g3, xhat, scale, needs[0])
        else:
            sum_dy, sum_dy_xhat = kernels.batch_norm_grad_sums(g3, xhat)
            if needs[0] and training:
                xp = get_array_module(grad)
                both = xp.concatenate((sum_dy, sum_dy_xhat)).astype(grad.dtype, copy=False)
                group.allreduce(both)  # a collective: every rank runs this backward
                mean_dy, mean_dy_xhat = both[:sum_dy.size] / count, both[sum_dy.size:] / count
                gx = kernels.batch_norm_grad_input(g3, xhat, scale, mean_dy, mean_dy_xhat)
            elif needs[0]:
                gx = g3 * scale[:, None]
        if gx is not None:
            gx = gx.reshape(grad.shape)
        gw = sum_dy_xhat.astype(grad.dtype, copy=False) if weight is not None and needs[1] \
            else None
        gb = sum_dy.astype(grad.dtype, copy=False) if has_bias and needs[2] else None
        return gx, gw, gb, None, None, None, None, None, None
