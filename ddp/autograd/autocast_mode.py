"""Autocast's state and its one op policy: which ops run in lower precision, float32, or the
widest input dtype (torch's ``at::autocast``; the user-facing ``autocast`` is ``ddp.amp``'s).

State is per thread, as in torch (each simulated rank of the ``threads`` backend has its own),
per device type (``"cpu"`` for NumPy arrays, ``"cuda"`` for CuPy). An op takes part by naming
torch's op under ``@autocast_op("linear")`` at its entry (the public function, before its dtype
checks); the tables below, copied from torch 2.13's ``aten/src/ATen/autocast_mode.cpp``, decide
what happens to its floating tensor arguments:

* ``lower``: cast to the autocast dtype (bfloat16 on CPU, float16 on CUDA by default);
* ``fp32``: cast to float32;
* ``promote``: cast to the widest floating dtype among them.

float64 tensors are never cast, as in torch. Casts are ``Cast`` nodes, so gradients flow back
through them in the dtype of the tensor that was cast (float32 leaves get float32 gradients).
Casts of leaf tensors that require grad (parameters) are cached until the outermost autocast
region of the thread exits, when ``cache_enabled``.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from ddp import dtypes
from ddp.autograd import tensor_type
from ddp.autograd.cast import Cast

# ---------------------------------------------------------------------------------- policy
# AutocastCPU in torch 2.13 (only the ops ddp has, or may gain, are named; the rest of torch's
# CPU list is linear algebra, FFT and 3-D pooling that ddp lacks).
_CPU_LOWER = frozenset({
    "conv1d", "conv2d", "conv3d", "bmm", "mm", "linalg_vecdot", "baddbmm", "addmm", "addbmm",
    "linear", "_convolution", "matmul", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "prelu", "scaled_dot_product_attention", "_native_multi_head_attention",
})
_CPU_FP32 = frozenset({
    "avg_pool3d", "binary_cross_entropy", "grid_sampler", "polar", "prod", "quantile",
    "nanquantile", "stft", "cdist", "trace", "max_pool3d", "adaptive_avg_pool3d",
    "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d",
    "replication_pad3d", "mse_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "poisson_nll_loss", "smooth_l1_loss", "cross_entropy_loss",
    "l1_loss", "huber_loss", "margin_ranking_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "ctc_loss", "kl_div", "multilabel_margin_loss",
    "binary_cross_entropy_with_logits",
})
_CPU_PROMOTE = frozenset({"stack", "cat", "index_copy"})

# AutocastCUDA (AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32, ..._SET_OPT_DTYPE, ..._PROMOTE).
_CUDA_LOWER = frozenset({
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr",
    "matmul", "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm",
    "chain_matmul", "linalg_multi_dot", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell", "scaled_dot_product_attention",
})
_CUDA_FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
    "reciprocal", "rsqrt", "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm",
    "rms_norm", "group_norm", "frobenius_norm", "nuclear_norm", "cosine_similarity",
    "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist",
    "renorm", "logsumexp", "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
    # fp32_set_opt_dtype
    "prod", "softmax", "log_softmax", "cumprod", "cumsum", "linalg_vector_norm",
    "linalg_matrix_norm", "sum",
    # not in torch's list: torch's cross_entropy is log_softmax + nll_loss, both float32 here;
    # ddp's is one fused node, so it is listed to give the same float32 result
    "cross_entropy_loss",
})
_CUDA_PROMOTE = frozenset({
    "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler",
    "index_put", "tensordot", "scatter_add",
})
# torch refuses binary_cross_entropy under CUDA autocast (unsafe in float16).
_CUDA_BANNED = frozenset({"binary_cross_entropy"})

_POLICY = {
    "cpu": {**dict.fromkeys(_CPU_LOWER, "lower"), **dict.fromkeys(_CPU_FP32, "fp32"),
            **dict.fromkeys(_CPU_PROMOTE, "promote")},
    "cuda": {**dict.fromkeys(_CUDA_LOWER, "lower"), **dict.fromkeys(_CUDA_FP32, "fp32"),
             **dict.fromkeys(_CUDA_PROMOTE, "promote"),
             **dict.fromkeys(_CUDA_BANNED, "banned")},
}
DEFAULT_DTYPES = {"cpu": dtypes.bfloat16, "cuda": dtypes.float16}
SUPPORTED_DTYPES = {"cpu": (dtypes.bfloat16, dtypes.float16),
                    "cuda": (dtypes.float16, dtypes.bfloat16, dtypes.float32)}


def policy(device_type: str, op: str) -> str | None:
    """``"lower"``, ``"fp32"``, ``"promote"``, ``"banned"`` or None (runs as called)."""
    return _POLICY[device_type].get(op)


# ----------------------------------------------------------------------------------- state
class _State(threading.local):
    def __init__(self):
        self.enabled = {"cpu": False, "cuda": False}
        self.dtype = dict(DEFAULT_DTYPES)
        self.cache_enabled = True
        self.depth = 0  # nesting of autocast regions in this thread (enabled or not)
        self.active = False  # enabled for some device type: the one test on every op's path
        self.cache: dict = {}


_state = _State()


def is_enabled(device_type: str) -> bool:
    """True when autocast is on for ``device_type`` in this thread."""
    return _state.enabled[device_type]


def get_dtype(device_type: str):
    """The ``ddp.dtype`` autocast casts to on ``device_type`` in this thread."""
    return _state.dtype[device_type]


def is_cache_enabled() -> bool:
    return _state.cache_enabled


def enter(device_type: str, enabled: bool, dtype, cache_enabled: bool) -> tuple:
    """Open a region; returns what :func:`exit` needs to restore the previous state."""
    previous = (device_type, _state.enabled[device_type], _state.dtype[device_type],
                _state.cache_enabled)
    _state.enabled[device_type] = enabled
    _state.dtype[device_type] = dtype
    _state.cache_enabled = cache_enabled
    _state.depth += 1
    _state.active = any(_state.enabled.values())
    return previous


def exit(token: tuple) -> None:  # noqa: A001 - pairs with enter
    """Close the region opened by :func:`enter`; the outermost one clears the cast cache."""
    device_type, enabled, dtype, cache_enabled = token
    _state.enabled[device_type] = enabled
    _state.dtype[device_type] = dtype
    _state.cache_enabled = cache_enabled
    _state.depth -= 1
    _state.active = any(_state.enabled.values())
    if _state.depth == 0:
        _state.cache.clear()


def clear_cache() -> None:
    """torch's ``torch.clear_autocast_cache``: forget the cached casts of this thread."""
    _state.cache.clear()


# -------------------------------------------------------------------------------- dispatch
def autocast_op(op: str):
    """Decorate the public entry of torch's op ``op``: its tensor arguments (also inside lists,
    as ``cat`` takes them) are cast by the policy of the device they are on."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not _state.active:
                return fn(*args, **kwargs)
            cast = _cast_all(op, (*args, *kwargs.values()))
            return fn(*cast[:len(args)], **dict(zip(kwargs, cast[len(args):], strict=True)))

        return wrapper

    return decorate


def _tensors(values):
    tensor_class = tensor_type.Tensor
    for v in values:
        if isinstance(v, tensor_class):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (t for t in v if isinstance(t, tensor_class))


def _device_type(t) -> str:
    return "cpu" if type(t.array) is np.ndarray else "cuda"


def _eligible(t, device_type: str) -> bool:
    dt = t.array.dtype
    return (dtypes.is_floating(dt) and dt != np.float64 and _device_type(t) == device_type)


def _cast_all(op: str, values) -> tuple:
    values = tuple(values)
    tensors = list(_tensors(values))
    if not tensors:
        return values
    device_type = _device_type(tensors[0])
    if not _state.enabled[device_type]:
        return values
    rule = policy(device_type, op)
    if rule is None:
        return values
    if rule == "banned":
        raise RuntimeError(
            f"torch.nn.functional.{op} and torch.nn.{op.title().replace('_', '')}Loss are "
            f"unsafe to autocast. Many models use a sigmoid layer right before the binary "
            f"cross entropy layer. In this case, combine the two layers using "
            f"torch.nn.functional.binary_cross_entropy_with_logits or "
            f"torch.nn.BCEWithLogitsLoss. binary_cross_entropy_with_logits and BCEWithLogits "
            f"are safe to autocast.")
    low = _state.dtype[device_type].np_dtype
    if rule == "lower":
        target = low
    elif rule == "fp32":
        target = np.dtype(np.float32)
    else:  # promote: float32 wins over the lower dtype; float64 is ignored
        eligible = [t.array.dtype for t in tensors if _eligible(t, device_type)]
        target = np.dtype(np.float32) if np.float32 in eligible else low
    return tuple(_cast_value(v, target, device_type) for v in values)


def _cast_value(v, target: np.dtype, device_type: str):
    if isinstance(v, tensor_type.Tensor):
        return _cast(v, target, device_type)
    if isinstance(v, (list, tuple)) and any(isinstance(t, tensor_type.Tensor) for t in v):
        return type(v)(_cast(t, target, device_type) if isinstance(t, tensor_type.Tensor)
                       else t for t in v)
    return v


def _cast(t, target: np.dtype, device_type: str):
    if not _eligible(t, device_type) or t.array.dtype == target:
        return t
    cacheable = (_state.cache_enabled and t.grad_fn is None and t.requires_grad
                 and target != np.float32)
    if cacheable:
        hit = _state.cache.get(id(t))
        if hit is not None and hit[0] is t and hit[1].array.dtype == target:
            return hit[1]
    out = Cast.apply(t, target)
    if cacheable:
        _state.cache[id(t)] = (t, out)  # holds t, so its id cannot be reused meanwhile
    return out
