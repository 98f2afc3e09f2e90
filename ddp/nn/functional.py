"""``ddp.nn.functional``: torch's functional API; validation here, maths in ``_functions``.

Each function checks its arguments (shapes, dtypes, ranges) and raises errors that name them,
then applies one graph node from ``ddp.nn._functions`` (or a core op from ``ddp.ops``).
"""

from __future__ import annotations

import numpy as np

from ddp import ops
from ddp.autograd.autocast_mode import autocast_op
from ddp.backend import get_array_module
from ddp.kernels.erf import erf as _erf_array
from ddp.nn._functions import activation as _act
from ddp.nn._functions import conv as _conv
from ddp.nn._functions import linear as _lin
from ddp.nn._functions import loss as _loss
from ddp.nn._functions import normalization as _norm
from ddp.nn._functions import pooling as _pool
from ddp.ops._util import normalize_dim
from ddp.tensor import Tensor

__all__ = [
    "conv2d", "cross_entropy", "dropout", "embedding", "erf", "gelu", "layer_norm", "linear",
    "log_softmax", "max_pool2d", "mse_loss", "nll_loss", "relu", "sigmoid", "softmax", "tanh",
]


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value


def _check_same_dtype(name: str, input: Tensor, weight: Tensor | None,  # noqa: A002
                      bias: Tensor | None) -> None:
    """torch refuses mixed dtypes here; NumPy would silently upcast (int/float64 -> float64)."""
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(
                f"{name}: input dtype {input.dtype} and {what} dtype {t.dtype} should be the "
                f"same (input shape {tuple(input.shape)}, {what} shape {tuple(t.shape)}); "
                f"cast the input with .to({t.dtype})"
                + (f" or the module with .to({input.dtype})"
                   if input.dtype.is_floating_point else "")
            )


def _check_reduction(reduction: str) -> None:
    if reduction not in _loss._REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")


# --------------------------------------------------------------------------- linear / sparse
@autocast_op("linear")
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:  # noqa: A002
    """``input @ weight.T + bias`` over the last dim of ``input``."""
    if input.ndim == 0 or input.shape[-1] != weight.shape[-1]:
        raise RuntimeError(
            f"linear: input of shape {tuple(input.shape)} does not match weight of shape "
            f"{tuple(weight.shape)} (expected input.shape[-1] == {weight.shape[-1]})"
        )
    _check_same_dtype("linear", input, weight, bias)
    return _lin.Linear.apply(input, weight, bias)


def _min_max(array) -> tuple[int, int]:
    if isinstance(array, np.ndarray):
        return int(array.min()), int(array.max())
    low, high = get_array_module(array).stack((array.min(), array.max())).tolist()
    return int(low), int(high)


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None,  # noqa: A002
              max_norm: float | None = None, **unsupported) -> Tensor:
    """Rows of ``weight`` at the integer indices ``input``."""
    if max_norm is not None or any(unsupported.values()):
        raise NotImplementedError("embedding: max_norm/scale_grad_by_freq/sparse are unsupported")
    if input.dtype.is_floating_point:
        raise RuntimeError(
            f"Expected tensor for argument 'indices' to have an integer dtype, got {input.dtype}"
        )
    if weight.ndim != 2:
        raise RuntimeError(f"embedding: 'weight' must be 2-D, got shape {tuple(weight.shape)}")
    num = weight.shape[0]
    if input.numel():  # CuPy would wrap a bad index silently: check (one device read)
        low, high = _min_max(input.array)
        if low < 0 or high >= num:
            bad = high if high >= num else low
            raise IndexError(f"index out of range in self: index {bad} is out of range for an "
                             f"embedding of {num} rows")
    if padding_idx is not None and not -num <= padding_idx < num:
        raise AssertionError(f"Padding_idx must be within num_embeddings (got padding_idx="
                             f"{padding_idx} for {num} embeddings)")
    if padding_idx is not None and padding_idx < 0:
        padding_idx += num
    return _lin.Embedding.apply(weight, input, padding_idx)


# -------------------------------------------------------------------------------- conv/pool
@autocast_op("conv2d")
def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None,  # noqa: A002
           stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution of an ``(N, C, H, W)`` input with an ``(O, C, kh, kw)`` weight."""
    if groups != 1:
        raise NotImplementedError("conv2d: groups != 1 is not supported")
    if input.ndim != 4:
        raise RuntimeError(
            f"conv2d expects a 4-D (N, C, H, W) input, got shape {tuple(input.shape)}"
        )
    if weight.ndim != 4 or input.shape[1] != weight.shape[1]:
        raise RuntimeError(
            f"conv2d: input of shape {tuple(input.shape)} has {input.shape[1]} channels, but "
            f"weight of shape {tuple(weight.shape)} expects {weight.shape[1]}"
        )
    _check_same_dtype("conv2d", input, weight, bias)
    if isinstance(padding, str):
        raise NotImplementedError("conv2d: string padding is not supported")
    stride, padding, dilation = (_pair(stride, "stride"), _pair(padding, "padding"),
                                 _pair(dilation, "dilation"))
    if min(stride) <= 0:
        raise RuntimeError(f"conv2d: non-positive stride is not supported, got {list(stride)}")
    if min(padding) < 0:
        raise RuntimeError(f"conv2d: negative padding is not supported, got {list(padding)}")
    if min(dilation) <= 0:
        raise RuntimeError(f"conv2d: dilation should be greater than zero, but got "
                           f"{list(dilation)}")
    kh, kw = weight.shape[2:]
    if kh <= 0 or kw <= 0:
        raise RuntimeError(f"conv2d: kernel size should be greater than zero, but got "
                           f"kernel_height: {kh} kernel_width: {kw}")
    for axis, size, k, p, d in ((2, input.shape[2], kh, padding[0], dilation[0]),
                                (3, input.shape[3], kw, padding[1], dilation[1])):
        if size + 2 * p < d * (k - 1) + 1:
            raise RuntimeError(
                f"conv2d: kernel size {d * (k - 1) + 1} (dilated) is larger than the padded "
                f"input size {size + 2 * p} in dim {axis} of input {tuple(input.shape)}"
            )
    return _conv.Conv2d.apply(input, weight, bias, stride, padding, dilation)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,  # noqa: A002
               ceil_mode: bool = False, return_indices: bool = False) -> Tensor:
    """Maximum over ``kernel_size`` windows of an ``(N, C, H, W)`` input."""
    if ceil_mode or return_indices:
        raise NotImplementedError("max_pool2d: ceil_mode/return_indices are not supported")
    if input.ndim != 4:
        raise RuntimeError(
            f"max_pool2d expects a 4-D (N, C, H, W) input, got shape {tuple(input.shape)}"
        )
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride == () else _pair(stride, "stride")
    padding, dilation = _pair(padding, "padding"), _pair(dilation, "dilation")
    _check_pool_window(input, kernel, stride, padding, dilation)
    return _pool.MaxPool2d.apply(input, kernel, stride, padding, dilation)


def _check_pool_window(input: Tensor, kernel, stride, padding, dilation) -> None:  # noqa: A002
    """torch's checks of a pooling window; a window past the input would give an empty or
    wrapped result instead of an error."""
    if min(kernel) <= 0:
        raise RuntimeError(f"max_pool2d: kernel size should be greater than zero, but got kH: "
                           f"{kernel[0]} kW: {kernel[1]}")
    if min(stride) <= 0:
        raise RuntimeError(f"max_pool2d: stride should not be zero or negative, but got dH: "
                           f"{stride[0]} dW: {stride[1]}")
    if min(dilation) <= 0:
        raise RuntimeError(f"max_pool2d: dilation should be greater than zero, but got "
                           f"dilationH: {dilation[0]} dilationW: {dilation[1]}")
    if min(padding) < 0:
        raise RuntimeError(f"max_pool2d: pad must be non-negative, but got pad: {padding}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise RuntimeError(
            f"max_pool2d: pad should be at most half of effective kernel size, but got "
            f"pad={padding} and kernel_size={kernel}"
        )
    n, c, h, w = input.shape
    if c == 0 or h == 0 or w == 0:
        raise RuntimeError(f"max_pool2d: Expected 3D or 4D (batch mode) tensor with optional 0 "
                           f"dim batch size for input, but got:{list(input.shape)}")
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in
           zip((h, w), kernel, stride, padding, dilation, strict=True)]
    if min(out) < 1:
        raise RuntimeError(f"max_pool2d: Given input size: ({c}x{h}x{w}). Calculated output "
                           f"size: ({c}x{out[0]}x{out[1]}). Output size is too small")


# ---------------------------------------------------------------------------- normalization
@autocast_op("layer_norm")
def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,  # noqa: A002
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims, then scale and shift."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if tuple(input.shape[input.ndim - k:]) != normalized_shape or input.ndim < k:
        raise RuntimeError(
            f"Given normalized_shape={list(normalized_shape)}, expected input with shape "
            f"[*, {', '.join(map(str, normalized_shape))}], but got input of size "
            f"{list(input.shape)}"
        )
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"layer_norm: expected a floating input, got {input.dtype}")
    _check_same_dtype("layer_norm", input, weight, bias)
    return _norm.LayerNorm.apply(input, weight, bias, k, float(eps))


# ------------------------------------------------------------------------------ activations
def relu(input: Tensor, inplace: bool = False) -> Tensor:  # noqa: A002
    return input.relu_() if inplace else ops.relu(input)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:  # noqa: A002
    """``x * Phi(x)`` with the exact normal CDF (``'none'``) or its ``'tanh'`` approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")
    return _act.GELU.apply(input, approximate)


def tanh(input: Tensor) -> Tensor:  # noqa: A002
    return ops.tanh(input)


def sigmoid(input: Tensor) -> Tensor:  # noqa: A002
    return ops.sigmoid(input)


def softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:  # noqa: A002
    return ops.softmax(input, dim, dtype=dtype)


def log_softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:  # noqa: A002
    return ops.log_softmax(input, dim, dtype=dtype)


def erf(input: Tensor) -> Tensor:  # noqa: A002
    """Elementwise error function (not differentiable here; ``gelu`` has its own backward)."""
    return Tensor._from_op(_erf_array(input.array), None)


def dropout(input: Tensor, p: float = 0.5, training: bool = True,  # noqa: A002
            inplace: bool = False, generator=None) -> Tensor:
    """Zero elements with probability ``p`` (default generator) and scale by ``1/(1-p)``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    out = _act.Dropout.apply(input, float(p), generator)
    return input._rebase(out) if inplace else out


# ------------------------------------------------------------------------------------ losses
@autocast_op("cross_entropy_loss")
def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,  # noqa: A002
                  size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross entropy between logits ``(N, C[, d...])`` and class indices ``(N[, d...])``.

    Class-probability targets (a float ``target`` of the input's shape) are also accepted.
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    _check_classes(input, weight, "cross_entropy")
    if target.dtype.is_floating_point:
        return _soft_cross_entropy(input, target, weight, reduction, label_smoothing)
    return _loss.CrossEntropy.apply(input, target, weight, int(ignore_index), reduction,
                                    float(label_smoothing))


@autocast_op("nll_loss")
def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,  # noqa: A002
             size_average=None, ignore_index: int = -100, reduce=None,
             reduction: str = "mean") -> Tensor:
    """Negative log likelihood of log-probabilities ``(N, C[, d...])`` at class indices."""
    _check_reduction(reduction)
    _check_classes(input, weight, "nll_loss")
    return _loss.NLLLoss.apply(input, target, weight, int(ignore_index), reduction)


@autocast_op("mse_loss")
def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,  # noqa: A002
             reduction: str = "mean") -> Tensor:
    """Mean (or summed, or elementwise) squared error."""
    _check_reduction(reduction)
    if isinstance(target, Tensor) and target.array.dtype != input.array.dtype:
        target = target.to(input.dtype)
    return _loss.MSELoss.apply(input, target, reduction)


def _check_classes(input: Tensor, weight: Tensor | None, name: str) -> None:  # noqa: A002
    if input.ndim == 0:
        raise ValueError(f"{name}: input must have at least one dimension (the classes)")
    c = input.shape[1] if input.ndim > 1 else input.shape[0]
    if weight is not None and tuple(weight.shape) != (c,):
        raise RuntimeError(
            f"{name}: weight tensor should be defined either for all {c} classes or no "
            f"classes but got weight tensor of shape: {list(weight.shape)}"
        )


def _soft_cross_entropy(input, target, weight, reduction, label_smoothing):  # noqa: A002
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"cross_entropy: probability target of shape {tuple(target.shape)} must match the "
            f"input shape {tuple(input.shape)}"
        )
    class_dim = normalize_dim(1 if input.ndim > 1 else 0, input.ndim)
    c = input.shape[class_dim]
    if label_smoothing > 0.0:
        target = target * (1.0 - label_smoothing) + label_smoothing / c
    logp = ops.log_softmax(input, class_dim)
    if weight is not None:
        shape = [1] * input.ndim
        shape[class_dim] = c
        logp = logp * weight.reshape(shape)
    per_sample = -(logp * target).sum(class_dim)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / (per_sample.numel() if per_sample.ndim else 1)


# ------------------------------------------------- activations, element-wise losses, helpers
# Defined beside their graph nodes in ddp/nn/_functions/{activation,loss,helpers}_api.py and
# re-exported here under torch's names (this block only imports; it keeps this file small).
from ddp.nn._functions.activation_api import (  # noqa: E402
    dropout1d,
    dropout2d,
    elu,
    hardtanh,
    leaky_relu,
    mish,
    prelu,
    relu6,
    silu,
    softplus,
)
from ddp.nn._functions.helpers_api import cosine_similarity, normalize, one_hot, pad  # noqa: E402
from ddp.nn._functions.loss_api import (  # noqa: E402
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    huber_loss,
    kl_div,
    l1_loss,
    smooth_l1_loss,
)

__all__ += [
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cosine_similarity", "dropout1d",
    "dropout2d", "elu", "hardtanh", "huber_loss", "kl_div", "l1_loss", "leaky_relu", "mish",
    "normalize", "one_hot", "pad", "prelu", "relu6", "silu", "smooth_l1_loss", "softplus",
]
# ======================================================================= batch norm, ResNet ops
# Normalisation layers, 1-D convolution and average pooling (the ops ResNets need).
from ddp import creation as _creation  # noqa: E402
from ddp.nn._functions import batchnorm as _bn  # noqa: E402
from ddp.nn._functions import groupnorm as _gn  # noqa: E402

__all__ += ["adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv_transpose2d",
            "group_norm"]


def batch_norm(input: Tensor, running_mean: Tensor | None,  # noqa: A002
               running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """Normalise each channel (dim 1) of an ``(N, C, *)`` input, then scale and shift.

    Training: batch statistics (biased variance for the normalisation); ``running_mean`` and
    ``running_var`` (when not None) are updated in place towards the batch mean and the
    unbiased batch variance by ``momentum``. Evaluation: the running statistics.

    Raises:
        ValueError: training on a single value per channel.
        RuntimeError: a per-channel tensor does not have ``C`` elements, or evaluation without
            running statistics.
    """
    _bn.check_inputs(input, running_mean, running_var, weight, bias, training)
    _check_same_dtype("batch_norm", input, weight, bias)
    return _bn.BatchNorm.apply(input, weight, bias, running_mean, running_var, bool(training),
                               float(momentum), float(eps), None)


@autocast_op("group_norm")
def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,  # noqa: A002
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each sample over groups of ``C / num_groups`` channels, then scale and shift."""
    if input.ndim < 2 or input.shape[1] % num_groups != 0:
        raise RuntimeError(
            f"Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {list(input.shape)} and num_groups={num_groups}"
        )
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"group_norm: expected a floating point input, got {input.dtype}")
    c = input.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise RuntimeError(
                f"group_norm: expected {name} of shape ({c},) for input of shape "
                f"{tuple(input.shape)}, got {tuple(t.shape)}"
            )
    _check_same_dtype("group_norm", input, weight, bias)
    return _gn.GroupNorm.apply(input, weight, bias, int(num_groups), float(eps))


def _single(value, name: str) -> int:
    if isinstance(value, int):
        return value
    value = tuple(int(v) for v in value)
    if len(value) != 1:
        raise ValueError(f"{name} must be an int or a 1-tuple, got {value}")
    return value[0]


@autocast_op("conv1d")
def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None,  # noqa: A002
           stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """1-D convolution of an ``(N, C, L)`` (or ``(C, L)``) input with an ``(O, C, k)`` weight.

    Runs as ``conv2d`` on the ``(N, C, 1, L)`` view (same kernels, same backward).
    """
    if input.ndim not in (2, 3):
        raise RuntimeError(
            f"conv1d expects a 2-D (C, L) or 3-D (N, C, L) input, got shape {tuple(input.shape)}"
        )
    if weight.ndim != 3:
        raise RuntimeError(f"conv1d expects a 3-D (O, C, k) weight, got {tuple(weight.shape)}")
    if isinstance(padding, str):
        raise NotImplementedError("conv1d: string padding is not supported")
    batched = input if input.ndim == 3 else input.unsqueeze(0)
    out = conv2d(batched.unsqueeze(2), weight.unsqueeze(2), bias,
                 (1, _single(stride, "stride")), (0, _single(padding, "padding")),
                 (1, _single(dilation, "dilation")), groups).squeeze(2)
    return out if input.ndim == 3 else out.squeeze(0)


def _pool_output_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """torch's pooling output size; with ``ceil_mode`` the last window must start inside the
    input or its left padding."""
    out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0,  # noqa: A002
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Tensor:
    """Mean over ``kernel_size`` windows of an ``(N, C, H, W)`` input (zero padding)."""
    if input.ndim != 4:
        raise RuntimeError(
            f"avg_pool2d expects a 4-D (N, C, H, W) input, got shape {tuple(input.shape)}"
        )
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride == () else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise RuntimeError(
            f"pad should be at most half of effective kernel size, but got pad={padding} and "
            f"kernel_size={kernel}"
        )
    output = tuple(_pool_output_size(input.shape[2 + a], kernel[a], stride[a], padding[a],
                                     bool(ceil_mode)) for a in (0, 1))
    if min(output) <= 0:
        raise RuntimeError(
            f"avg_pool2d: kernel size {kernel} is larger than the padded input "
            f"{tuple(input.shape)} with padding {padding} (output size {output})"
        )
    if divisor_override is not None and divisor_override <= 0:
        raise RuntimeError("divisor must be not zero")
    return _pool.AvgPool2d.apply(input, kernel, stride, padding, output,
                                 bool(count_include_pad), divisor_override)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:  # noqa: A002
    """Mean over torch's adaptive windows, giving an ``output_size`` (``(Ho, Wo)``) output.

    ``output_size`` is an int, or a pair whose ``None`` entries keep the input's size.
    """
    if input.ndim not in (3, 4):
        raise RuntimeError(
            f"adaptive_avg_pool2d expects a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape "
            f"{tuple(input.shape)}"
        )
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    if len(output_size) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be 2 values, got {output_size}")
    size = tuple(int(input.shape[input.ndim - 2 + k] if s is None else s)
                 for k, s in enumerate(output_size))
    if min(size) <= 0:
        raise RuntimeError(f"adaptive_avg_pool2d: output_size must be positive, got {size}")
    batched = input if input.ndim == 4 else input.unsqueeze(0)
    out = _pool.AdaptiveAvgPool2d.apply(batched, size)
    return out if input.ndim == 4 else out.squeeze(0)


def _zeros_like_shape(x: Tensor, shape: tuple) -> Tensor:
    return _creation.zeros(shape, dtype=x.dtype, device=x.device)


def _zero_stuffed(input: Tensor, stride: tuple[int, int]) -> Tensor:  # noqa: A002
    """``(N, C, (H-1)*sh+1, (W-1)*sw+1)``: ``input`` with ``s - 1`` zeros between neighbours."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return input
    n, c, h, w = input.shape
    x = input.reshape(n, c, h, 1, w, 1)
    if sh > 1:
        x = ops.cat([x, _zeros_like_shape(x, (n, c, h, sh - 1, w, 1))], dim=3)
    if sw > 1:
        x = ops.cat([x, _zeros_like_shape(x, (n, c, h, sh, w, sw - 1))], dim=5)
    return x.reshape(n, c, h * sh, w * sw)[:, :, :(h - 1) * sh + 1, :(w - 1) * sw + 1]


@autocast_op("conv_transpose2d")
def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None,  # noqa: A002
                     stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    """Transposed 2-D convolution (the input gradient of ``conv2d``) with a ``(C, O, kh, kw)``
    weight; the output is ``(H - 1) * s - 2 p + d (k - 1) + output_padding + 1`` high.

    Runs as ``conv2d`` with the flipped, transposed kernel over the zero-stuffed input, padded
    by ``d (k - 1) - p`` (cropped where that is negative), so its gradients are conv2d's.
    """
    if groups != 1:
        raise NotImplementedError("conv_transpose2d: groups != 1 is not supported")
    if input.ndim != 4 or weight.ndim != 4 or input.shape[1] != weight.shape[0]:
        raise RuntimeError(
            f"conv_transpose2d: expected a 4-D (N, C, H, W) input and a (C, O, kh, kw) weight "
            f"with the same C, got input {tuple(input.shape)} and weight {tuple(weight.shape)}"
        )
    _check_same_dtype("conv_transpose2d", input, weight, bias)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    output_padding, dilation = _pair(output_padding, "output_padding"), _pair(dilation,
                                                                              "dilation")
    kernel = tuple(weight.shape[2:])
    for axis in (0, 1):
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise RuntimeError(
                f"output padding must be smaller than either stride or dilation, but got "
                f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
            )
        size = ((input.shape[2 + axis] - 1) * stride[axis] - 2 * padding[axis]
                + dilation[axis] * (kernel[axis] - 1) + output_padding[axis] + 1)
        if size <= 0:
            raise RuntimeError(
                f"conv_transpose2d: output size {size} in dim {2 + axis} is too small for "
                f"input {tuple(input.shape)}, kernel {kernel}, stride {stride}, padding {padding}"
            )
    x = _zero_stuffed(input, stride)
    n, c, h, w = x.shape
    if output_padding[0]:
        x = ops.cat([x, _zeros_like_shape(x, (n, c, output_padding[0], w))], dim=2)
    if output_padding[1]:
        x = ops.cat([x, _zeros_like_shape(x, (n, c, x.shape[2], output_padding[1]))], dim=3)
    pad = tuple(dilation[a] * (kernel[a] - 1) - padding[a] for a in (0, 1))
    out = conv2d(x, weight.flip((2, 3)).transpose(0, 1), bias, 1,
                 (max(pad[0], 0), max(pad[1], 0)), dilation)
    crop_h, crop_w = max(-pad[0], 0), max(-pad[1], 0)
    if crop_h or crop_w:
        out = out[:, :, crop_h:out.shape[2] - crop_h, crop_w:out.shape[3] - crop_w]
    return out

# ------------------------------------------------------------------------------------ attention
from ddp.nn._functions.attention_api import scaled_dot_product_attention  # noqa: E402, F401
from ddp.nn._functions.interpolate_api import interpolate  # noqa: E402, F401
from ddp.nn._functions.mha_api import multi_head_attention_forward  # noqa: E402, F401

__all__ += ["interpolate", "multi_head_attention_forward", "scaled_dot_product_attention"]

from ddp.nn._functions.pixel_shuffle_api import pixel_shuffle, pixel_unshuffle  # noqa: E402

__all__ += ["pixel_shuffle", "pixel_unshuffle"]
