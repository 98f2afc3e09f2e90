"""The public ``nn.functional`` element-wise losses: binary cross entropy (probabilities and
logits), L1, smooth L1, Huber and KL divergence.

``nn.functional`` re-exports these. Each validates shapes and the reduction with torch's
messages, computes the unreduced loss with one node of
:mod:`ddp.nn._functions.pointwise_loss` (or ``abs`` for L1), multiplies by ``weight`` and
reduces with ordinary ops. The legacy ``size_average``/``reduce`` flags map to a reduction as
in torch (with its deprecation warning).
"""

from __future__ import annotations

import warnings

import numpy as np

from ddp import ops
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.grad_mode import is_grad_enabled
from ddp.nn._functions import pointwise_loss as _pl
from ddp.tensor import Tensor

_REDUCTIONS = ("none", "mean", "sum")


def legacy_get_string(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    result = "mean" if size_average and reduce else "sum" if reduce else "none"
    warnings.warn(f"size_average and reduce args will be deprecated, please use "
                  f"reduction='{result}' instead.", stacklevel=3)
    return result


def _check_reduction(reduction: str, allowed: tuple = _REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _warn_broadcast(input: Tensor, target: Tensor) -> None:  # noqa: A002
    if tuple(target.shape) != tuple(input.shape):
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). This will likely lead to incorrect results due to "
            "broadcasting. Please ensure they have the same size.", stacklevel=3)


def _check_weight_shape(input: Tensor, weight: Tensor | None) -> None:  # noqa: A002
    if weight is not None and tuple(weight.shape) != tuple(input.shape):
        raise ValueError(f"Weights and input must have the same size. (weight "
                         f"{tuple(weight.shape)}, input {tuple(input.shape)})")


def _same_float_dtype(name: str, input: Tensor, target: Tensor) -> None:  # noqa: A002
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{name}: expected a floating input, got {input.dtype}")
    if target.dtype != input.dtype:
        raise RuntimeError(f"{name}: expected target of dtype {input.dtype} like the input, "
                           f"got {target.dtype}; cast it with .to({input.dtype})")


def _not_differentiable(name: str, argument: str, t: Tensor | None) -> None:
    """torch has no derivative for these arguments and refuses them when they require grad."""
    if t is not None and t.requires_grad and is_grad_enabled():
        raise RuntimeError(f"The function '{name}' is not differentiable with respect to "
                           f"argument '{argument}'. This input cannot have requires_grad True.")


def _in_unit_interval(t: Tensor) -> bool:
    array = t.array
    return not bool(((array < 0) | (array > 1)).any())


@autocast_op("binary_cross_entropy")
def binary_cross_entropy(input: Tensor, target: Tensor,  # noqa: A002
                         weight: Tensor | None = None, size_average=None, reduce=None,
                         reduction: str = "mean") -> Tensor:
    """``-w * (t * log(x) + (1 - t) * log(1 - x))`` between probabilities ``x`` and targets.

    Each log is clamped to ``>= -100`` (torch's choice: a finite loss at ``x = 0`` or ``1``).

    Raises:
        ValueError: the shapes of ``input`` and ``target`` differ, or a bad ``reduction``.
        RuntimeError: an element of ``input`` or ``target`` lies outside ``[0, 1]``, or
            ``weight`` requires grad (torch has no derivative for it).
    """
    reduction = legacy_get_string(size_average, reduce, reduction)
    _check_reduction(reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}) is deprecated. Please ensure they have the same size.")
    _same_float_dtype("binary_cross_entropy", input, target)
    _not_differentiable("binary_cross_entropy", "weight", weight)
    if not _in_unit_interval(input):
        raise RuntimeError("all elements of input should be between 0 and 1")
    if not _in_unit_interval(target):
        raise RuntimeError("all elements of target should be between 0 and 1")
    loss = _pl.BinaryCrossEntropy.apply(input, target)
    if weight is not None:
        loss = loss * weight.expand(np.broadcast_shapes(tuple(target.shape), tuple(weight.shape)))
    return _reduce(loss, reduction)


@autocast_op("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,  # noqa: A002
                                     weight: Tensor | None = None, size_average=None,
                                     reduce=None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross entropy of ``sigmoid(input)``, computed stably from the logits.

    ``-w * (p * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))`` with ``p`` the
    ``pos_weight`` (per class, broadcast along the last dim) and ``w`` the ``weight``.

    Raises:
        ValueError: the shapes of ``input`` and ``target`` differ, or a bad ``reduction``.
        RuntimeError: ``weight`` or ``pos_weight`` requires grad (no derivative in torch).
    """
    reduction = legacy_get_string(size_average, reduce, reduction)
    _check_reduction(reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"Target size ({target.size()}) must be the same as input size "
                         f"({input.size()})")
    _same_float_dtype("binary_cross_entropy_with_logits", input, target)
    _not_differentiable("binary_cross_entropy_with_logits", "weight", weight)
    _not_differentiable("binary_cross_entropy_with_logits", "pos_weight", pos_weight)
    loss = _pl.BinaryCrossEntropyWithLogits.apply(input, target, pos_weight)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


@autocast_op("l1_loss")
def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,  # noqa: A002
            reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean (or summed, or element-wise) absolute error; with ``weight``, the weighted mean
    is ``sum(w * |x - t|) / sum(w)``, as in torch."""
    _warn_broadcast(input, target)
    reduction = legacy_get_string(size_average, reduce, reduction)
    _check_reduction(reduction)
    _check_weight_shape(input, weight)
    loss = ops.abs(input - target)
    if weight is None:
        return _reduce(loss, reduction)
    loss = loss * weight
    return loss.sum() / weight.sum() if reduction == "mean" else _reduce(loss, reduction)


@autocast_op("smooth_l1_loss")
def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None,  # noqa: A002
                   reduce=None, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2``, ``d = input - target``;
    ``beta = 0`` is the L1 loss.

    Raises:
        RuntimeError: ``beta`` is negative.
    """
    _warn_broadcast(input, target)
    reduction = legacy_get_string(size_average, reduce, reduction)
    _check_reduction(reduction)
    if beta < 0:
        raise RuntimeError(f"smooth_l1_loss does not support negative values for beta "
                           f"(got beta={beta}).")
    if beta == 0.0:
        return _reduce(ops.abs(input - target), reduction)
    return _reduce(_pl.SmoothL1.apply(input, target, float(beta), False), reduction)


@autocast_op("huber_loss")
def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean",  # noqa: A002
               delta: float = 1.0, weight: Tensor | None = None) -> Tensor:
    """``0.5 d^2`` where ``|d| < delta``, else ``delta * (|d| - delta / 2)``.

    Raises:
        RuntimeError: ``delta`` is not positive.
    """
    _warn_broadcast(input, target)
    _check_reduction(reduction)
    if not delta > 0:
        raise RuntimeError(f"huber_loss does not support non-positive values for delta "
                           f"(got delta={delta}).")
    _check_weight_shape(input, weight)
    loss = _pl.SmoothL1.apply(input, target, float(delta), True)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


@autocast_op("kl_div")
def kl_div(input: Tensor, target: Tensor, size_average=None, reduce=None,  # noqa: A002
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """Kullback-Leibler divergence ``target * (log(target) - input)``, ``input`` holding
    log-probabilities (and ``target`` too when ``log_target``).

    ``reduction='batchmean'`` divides the sum by the batch size (the KL divergence proper);
    ``'mean'`` divides by the number of elements, with torch's warning.
    """
    if size_average is not None or reduce is not None:
        reduction = legacy_get_string(size_average, reduce, reduction)
    elif reduction == "mean":
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support "
            "size.'batchmean' divides only by the batch size, and aligns with the KL div math "
            "definition.'mean' will be changed to behave the same as 'batchmean' in the next "
            "major release.", stacklevel=2)
    _check_reduction(reduction, _REDUCTIONS + ("batchmean",))
    loss = _pl.KLDiv.apply(input, target, bool(log_target))
    if reduction != "batchmean":
        return _reduce(loss, reduction)
    total = loss.sum()
    return total / input.shape[0] if input.ndim else total
