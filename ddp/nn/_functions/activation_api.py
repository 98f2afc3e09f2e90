"""The public ``nn.functional`` activations beyond ReLU/GELU, and channel-wise dropout.

``nn.functional`` re-exports these; each checks its arguments with torch's messages, then
applies one node of :mod:`ddp.nn._functions.pointwise`. ``inplace=True`` writes the result back
into the input with ``Tensor.copy_`` (recorded in the graph, refused on a leaf that requires
grad, as in torch).
"""

from __future__ import annotations

import warnings

from ddp.autograd.autocast_mode import autocast_op
from ddp.nn._functions import pointwise as _pw
from ddp.tensor import Tensor


def _floating(name: str, input: Tensor) -> None:  # noqa: A002
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f'"{name}" not implemented for {input.dtype} input of shape '
                                  f"{tuple(input.shape)}; expected a floating dtype")


def _result(input: Tensor, out: Tensor, inplace: bool) -> Tensor:  # noqa: A002
    return input.copy_(out) if inplace else out


def silu(input: Tensor, inplace: bool = False) -> Tensor:  # noqa: A002
    """``x * sigmoid(x)`` (the swish function)."""
    _floating("silu", input)
    return _result(input, _pw.SiLU.apply(input), inplace)


def mish(input: Tensor, inplace: bool = False) -> Tensor:  # noqa: A002
    """``x * tanh(softplus(x))``."""
    _floating("mish", input)
    return _result(input, _pw.Mish.apply(input), inplace)


def leaky_relu(input: Tensor, negative_slope: float = 0.01,  # noqa: A002
               inplace: bool = False) -> Tensor:
    """``x`` for ``x > 0``, else ``negative_slope * x``."""
    _floating("leaky_relu", input)
    return _result(input, _pw.LeakyReLU.apply(input, float(negative_slope)), inplace)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:  # noqa: A002
    """``x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    _floating("elu", input)
    return _result(input, _pw.ELU.apply(input, float(alpha)), inplace)


@autocast_op("softplus")
def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:  # noqa: A002
    """``log(1 + exp(beta * x)) / beta``, reverting to ``x`` where ``beta * x > threshold``."""
    _floating("softplus", input)
    return _pw.Softplus.apply(input, float(beta), float(threshold))


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,  # noqa: A002
             inplace: bool = False) -> Tensor:
    """``clamp(x, min_val, max_val)``; the gradient is 0 at and beyond the bounds.

    Raises:
        ValueError: ``min_val > max_val``.
    """
    if min_val > max_val:
        raise ValueError(f"min_val cannot be greater than max_val (got min_val={min_val}, "
                         f"max_val={max_val})")
    _floating("hardtanh", input)
    return _result(input, _pw.Hardtanh.apply(input, float(min_val), float(max_val)), inplace)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:  # noqa: A002
    """``min(max(x, 0), 6)``: ``hardtanh(x, 0, 6)``."""
    return hardtanh(input, 0.0, 6.0, inplace)


@autocast_op("prelu")
def prelu(input: Tensor, weight: Tensor) -> Tensor:  # noqa: A002
    """``x`` for ``x > 0``, else ``weight * x``, one weight per channel (dim 1) or one in all.

    Raises:
        RuntimeError: ``weight`` is not 1-D with 1 or ``input.shape[1]`` elements, or its
            dtype differs from the input's.
    """
    _floating("prelu", input)
    if weight.ndim > 1:
        raise RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: "
                           f"ndim = {weight.ndim} (shape {tuple(weight.shape)})")
    count = weight.numel()
    channels = input.shape[1] if input.ndim >= 2 else 1
    if count != 1 and count != channels:
        raise RuntimeError(
            f"Mismatch of parameter numbers and input channel size. Found parameter numbers = "
            f"{count} and channel size = {channels} (input shape {tuple(input.shape)})."
        )
    if weight.dtype != input.dtype:
        raise RuntimeError(f"prelu: Type promoting not supported. Got {input.dtype} input and "
                           f"{weight.dtype} weight; cast one with .to()")
    if count == 1:
        shaped = weight.reshape(())
    else:
        shaped = weight.reshape((channels,) + (1,) * (input.ndim - 2))
    return _pw.PReLU.apply(input, shaped)


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _feature_dropout(input: Tensor, p: float, training: bool, inplace: bool,  # noqa: A002
                     mask_shape: tuple) -> Tensor:
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return _result(input, input * 0.0, inplace)
    return _result(input, _pw.FeatureDropout.apply(input, float(p), mask_shape, None), inplace)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True,  # noqa: A002
              inplace: bool = False) -> Tensor:
    """Zero whole channels of an ``(N, C, H, W)`` (or ``(N, C, L)``) input with probability
    ``p`` and scale the rest by ``1 / (1 - p)``; the identity when not ``training``.

    Raises:
        ValueError: ``p`` is outside ``[0, 1]``.
        RuntimeError: the input has fewer than 2 dims.
    """
    _check_p(p)
    ndim = input.ndim
    if ndim not in (3, 4):
        warnings.warn(
            f"dropout2d: Received a {ndim}-D input to dropout2d, which is deprecated and will "
            "result in an error in a future release. To retain the behavior and silence this "
            "warning, please use dropout instead. Note that dropout2d exists to provide "
            "channel-wise dropout on inputs with 2 spatial dimensions, a channel dimension, and "
            "an optional batch dimension (i.e. 3D or 4D inputs).", stacklevel=2)
    if ndim == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D "
            "dropout behavior is desired - input is interpreted as shape (N, C, L), where C is "
            "the channel dim. This behavior will change in a future release to interpret the "
            "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.",
            stacklevel=2)
    if ndim < 2:
        raise RuntimeError(f"Feature dropout requires at least 2 dimensions in the input, got "
                           f"shape {tuple(input.shape)}")
    return _feature_dropout(input, p, training, inplace,
                            tuple(input.shape[:2]) + (1,) * (ndim - 2))


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True,  # noqa: A002
              inplace: bool = False) -> Tensor:
    """Zero whole channels of an ``(N, C, L)`` or ``(C, L)`` input with probability ``p``.

    Raises:
        ValueError: ``p`` is outside ``[0, 1]``.
        RuntimeError: the input is not 2-D or 3-D.
    """
    _check_p(p)
    if input.ndim not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.ndim}D input. Note "
            "that dropout1d exists to provide channel-wise dropout on inputs with 1 spatial "
            "dimension, a channel dimension, and an optional batch dimension (i.e. 2D or 3D "
            "inputs)."
        )
    return _feature_dropout(input, p, training, inplace, tuple(input.shape[:-1]) + (1,))
