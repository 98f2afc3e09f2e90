"""Fused kernels behind one dispatch point: CUDA on CuPy arrays, compiled loops or the NumPy
reference on NumPy arrays.

ops, nn and optim call these functions and never pick an implementation themselves::

    y, saved = kernels.gelu_forward(x, "none")     # one CUDA launch on a GPU

On float32/float64 NumPy arrays each function runs ``ddp.kernels.cpu``, loops compiled by numba
(``ddp.kernels.jit``) that make one pass over memory on the rank's threads; without numba, with
``DDP_JIT=0`` or on other dtypes, ``ddp.kernels.reference``, the NumPy formulas (the ops hold no
copy of them); on CuPy arrays the fused kernel from ``ddp.kernels.cuda``, and
for ``matmul`` and ``column_sums`` a direct cuBLAS call from ``ddp.kernels.cuda_gemm``
(stacked NumPy matrices: ``ddp.kernels.batched_gemm``). ``DDP_FUSED_KERNELS=0`` makes GPU
arrays take the reference path too (for A/B timing and debugging);
``DDP_CUBLAS_DIRECT=0`` sends only the matrix products back to ``cupy.matmul``.
"""

from __future__ import annotations

import numpy as np

from ddp import config
from ddp.backend import get_array_module, is_cupy_array

# cuda, cuda_gemm: CuPy on first use; cpu: numba on first use
from ddp.kernels import batched_gemm, cpu, cuda, cuda_gemm, jit, reference

FUSED: bool = config.get("DDP_FUSED_KERNELS")  # read at import; tests patch the constant


_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _impl(array):
    """The implementation module for ``array``: ``cpu`` (compiled) for float32/float64 NumPy
    arrays when numba runs, ``cuda`` for CuPy floating arrays, else ``reference``."""
    if type(array) is np.ndarray:
        return cpu if array.dtype in _COMPILED_DTYPES and jit.available(array) else reference
    if not FUSED or array.dtype.kind != "f" or array.itemsize < 4:
        return reference
    if not is_cupy_array(array):
        return reference
    return cuda


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step: float, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, decoupled: bool,
                maximize: bool, max_exp_avg_sq=None) -> None:
    """One Adam/AdamW step in place; ``step`` counts this step (1 on the first).

    ``max_exp_avg_sq`` (amsgrad) has no fused kernel: it always takes the reference path.
    """
    impl = reference if max_exp_avg_sq is not None else _impl(param)
    extra = {} if max_exp_avg_sq is None else {"max_exp_avg_sq": max_exp_avg_sq}
    impl.adam_update(param, grad, exp_avg, exp_avg_sq, step=float(step), lr=float(lr),
                     beta1=float(beta1), beta2=float(beta2), eps=float(eps),
                     weight_decay=float(weight_decay), decoupled=bool(decoupled),
                     maximize=bool(maximize), **extra)


def adam_update_multi(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, *,
                      step: float, lr: float, beta1: float, beta2: float, eps: float,
                      weight_decay: float, decoupled: bool, maximize: bool) -> None:
    """``adam_update`` over lists of same-dtype tensors that share ``step``: on a GPU one
    launch for all of them (contiguous arrays), else one update per tensor."""
    hyper = {"step": float(step), "lr": float(lr), "beta1": float(beta1), "beta2": float(beta2),
             "eps": float(eps), "weight_decay": float(weight_decay),
             "decoupled": bool(decoupled), "maximize": bool(maximize)}
    impl = _impl(max(params, key=lambda p: p.size)) if params else reference  # the largest
    if impl is not reference and not _all_contiguous(params, grads, exp_avgs, exp_avg_sqs):
        for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            adam_update(p, g, m, v, **hyper)  # one (fused) launch per tensor
        return
    impl.adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, **hyper)


def sgd_update_multi(params: list, grads: list, momentum_buffers: list, *, lr: float,
                     weight_decay: float, momentum: float, dampening: float, nesterov: bool,
                     maximize: bool) -> None:
    """One SGD step over lists of tensors, in place (see ``reference.sgd_update_multi``).

    ``momentum_buffers[i]`` None before the first step with momentum is replaced by the new
    buffer; the list may be empty when ``momentum == 0``. On a GPU one launch for all tensors
    when they share a dtype and a device, are contiguous and have their buffers; on NumPy
    arrays one compiled pass per tensor (``cpu.optim_sgd``); otherwise the reference, tensor by
    tensor.
    """
    hyper = {"lr": float(lr), "weight_decay": float(weight_decay), "momentum": float(momentum),
             "dampening": float(dampening), "nesterov": bool(nesterov),
             "maximize": bool(maximize)}
    if _sgd_fusable(params, grads, momentum_buffers, momentum):
        cuda.sgd_update_multi(params, grads, momentum_buffers, **hyper)
    elif _sgd_compiled(params):
        cpu.sgd_update_multi(params, grads, momentum_buffers, **hyper)
    else:
        reference.sgd_update_multi(params, grads, momentum_buffers, **hyper)


def _sgd_compiled(params) -> bool:
    """Whether the compiled CPU step takes ``params``: NumPy arrays, together at least
    ``jit.MIN_ELEMENTS`` elements, when numba runs (it sends what it cannot walk to the
    reference itself)."""
    if not params or not all(type(p) is np.ndarray for p in params):
        return False
    return sum(p.size for p in params) >= jit.MIN_ELEMENTS and jit.available()


def _sgd_fusable(params, grads, momentum_buffers, momentum) -> bool:
    if not params or _impl(params[0]) is reference:
        return False
    first = params[0]
    if any(type(p) is np.ndarray or p.dtype != first.dtype or p.device != first.device
           for p in params):
        return False
    if momentum != 0 and any(b is None for b in momentum_buffers):
        return False
    return _all_contiguous(params, grads, momentum_buffers if momentum != 0 else [])


def _all_contiguous(*lists) -> bool:
    return all(a.flags.c_contiguous for arrays in lists for a in arrays)


def matmul(a, b, out=None):
    """``a @ b``; on a GPU one direct cuBLAS call where the layout allows (see cuda_gemm); on
    the CPU stacks of matrices split over the rank's threads (see batched_gemm).

    ``out``: for 2-D ``a`` and ``b``, a C-contiguous array of the product's shape and dtype
    that receives it (a gradient written straight into its destination) and is returned.
    """
    if out is not None:
        return _matmul_into(a, b, out)
    if type(a) is np.ndarray:
        return batched_gemm.matmul(a, b) if a.ndim > 2 and type(b) is np.ndarray else a @ b
    if not FUSED:
        return a @ b
    out = cuda_gemm.matmul(a, b) if a.dtype.kind == "f" else None
    return a @ b if out is None else out


def _matmul_into(a, b, out):
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul(out=...) takes 2-D operands, got {a.ndim}-D and {b.ndim}-D")
    if type(a) is np.ndarray:
        return np.matmul(a, b, out=out)  # one BLAS call writing into out
    return get_array_module(a).matmul(a, b, out=out)


def column_sums(x2, out=None):
    """Sums over the rows of a 2-D ``x2`` (bias gradients); on a GPU one GEMV. ``out``: a
    contiguous array of shape ``(x2.shape[1],)`` that receives the sums and is returned."""
    if out is None:
        return _impl(x2).column_sums(x2)
    if type(x2) is np.ndarray:
        return np.add.reduce(x2, axis=0, out=out)  # the reference's sum, written into out
    out[...] = _impl(x2).column_sums(x2)
    return out


def gelu_forward(x, approximate: str = "none"):
    """``(gelu(x), saved)``; ``approximate`` is "none" (erf) or "tanh"."""
    return _impl(x).gelu_forward(x, approximate)


def gelu_backward(grad, x, saved, approximate: str = "none"):
    """The input gradient of GELU from ``gelu_forward``'s ``saved``."""
    return _impl(x).gelu_backward(grad, x, saved, approximate)


def layer_norm_forward(x2, weight, bias, eps: float):
    """Layer norm of the rows of a 2-D ``x2``: ``(out, xhat, rstd)``, rstd of shape (M, 1)."""
    return _impl(x2).layer_norm_forward(x2, weight, bias, float(eps))


def layer_norm_backward_input(grad2, xhat, rstd, weight):
    """The input gradient of ``layer_norm_forward`` (rows of a 2-D ``grad2``)."""
    return _impl(grad2).layer_norm_backward_input(grad2, xhat, rstd, weight)


def softmax_forward(x2):
    """Row softmax of a 2-D ``x2``."""
    return _impl(x2).softmax_forward(x2)


def softmax_backward(grad2, y2):
    """Input gradient of ``softmax_forward`` (``y2`` its output), rows of a 2-D ``grad2``."""
    return _impl(grad2).softmax_backward(grad2, y2)


def softmax_nll(x2, target):
    """Row softmax of a 2-D ``x2`` and ``logsumexp(row) - row[target]``: ``(prob, nll)``."""
    return _impl(x2).softmax_nll(x2, target)


def im2col(x, kernel, stride, padding, dilation, out):
    """Exact convolution columns of an NCHW ``x`` (zero padding included) into ``out``,
    ``(C*kh*kw, N*Ho*Wo)``; see ``reference.im2col``. Returns ``out``."""
    return _cpu_or_reference(x).im2col(x, kernel, stride, padding, dilation, out)


def col2im(cols, kernel, stride, padding, dilation, out):
    """The adjoint of :func:`im2col`: the NCHW input gradient ``out`` (overwritten) from the
    column gradient ``cols``. Returns ``out``."""
    return _cpu_or_reference(cols).col2im(cols, kernel, stride, padding, dilation, out)


def conv_output_size(size, kernel, stride, padding, dilation) -> tuple[int, int]:
    """``(Ho, Wo)`` of a convolution window over an input of spatial ``size``."""
    return reference.conv_output_size(size, kernel, stride, padding, dilation)


def relu_forward(x):
    """``max(x, 0)`` (NaN kept)."""
    return _cpu_or_reference(x).relu_forward(x)


def relu_backward(grad, out):
    """The input gradient of ReLU from its output ``out``: ``grad * (out > 0)``."""
    return _cpu_or_reference(grad).relu_backward(grad, out)


def max_pool2d_tiles(x, kernel):
    """Max pooling of NCHW ``x`` over non-overlapping ``kernel`` tiles (``max_pool2d(x, 2)``):
    ``(out, index)``, ``index`` the uint8 row-major offset of each window's first maximum, from
    the compiled kernel; None where it does not apply (the caller keeps its NumPy/CuPy path)."""
    if _impl(x) is not cpu:
        return None
    return cpu.max_pool2d_tiles(x, kernel)


def max_pool2d_tiles_backward(grad, index, x_shape, kernel):
    """The input gradient of :func:`max_pool2d_tiles` (``index`` its second result)."""
    return cpu.max_pool2d_tiles_backward(grad, index, x_shape, kernel)


def _cpu_or_reference(array):
    """``cpu`` or ``reference``: kernels with no CUDA form (CuPy arrays take the reference)."""
    return cpu if _impl(array) is cpu else reference


def batch_norm_stats(x3):
    """``(mean, m2)`` per channel of an ``(N, C, L)`` array, float64: the mean and the sum of
    squared deviations (two-pass); zeros for an empty batch."""
    return _cpu_or_reference(x3).batch_norm_stats(x3)


def batch_norm_train_forward(x3, weight, bias, eps: float):
    """Batch norm of ``(N, C, L)`` ``x3`` over its own batch: ``(out, xhat, mean, m2,
    invstd)`` (see ``reference.batch_norm_train_forward``)."""
    return _cpu_or_reference(x3).batch_norm_train_forward(x3, weight, bias, float(eps))


def batch_norm_apply(x3, mean, invstd, weight, bias):
    """``(out, xhat)``: ``xhat = (x3 - mean) * invstd``, ``out = xhat * weight + bias``."""
    return _cpu_or_reference(x3).batch_norm_apply(x3, mean, invstd, weight, bias)


def batch_norm_grad_sums(g3, xhat):
    """``(sum(g3), sum(g3 * xhat))`` per channel of ``(N, C, L)`` arrays."""
    return _cpu_or_reference(xhat).batch_norm_grad_sums(g3, xhat)


def batch_norm_grad_input(g3, xhat, scale, mean_dy, mean_dy_xhat):
    """``scale * (g3 - mean_dy - xhat * mean_dy_xhat)`` with per-channel vectors."""
    return _cpu_or_reference(xhat).batch_norm_grad_input(g3, xhat, scale, mean_dy,
                                                              mean_dy_xhat)


def batch_norm_backward(g3, xhat, scale, need_input: bool):
    """Training backward over the local batch: ``(gx or None, sum(g3), sum(g3 * xhat))``."""
    return _cpu_or_reference(xhat).batch_norm_backward(g3, xhat, scale, bool(need_input))
