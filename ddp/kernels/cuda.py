"""Fused CUDA kernels (CuPy ``ElementwiseKernel``/``RawKernel``), compiled on first use.

One launch replaces the chain of element-wise launches that the composed NumPy-style code costs
on a GPU. Each kernel follows the arithmetic of its reference in ``ddp.kernels.reference``;
``tests/gpu/test_gpu_ops.py`` checks them against each other. Contiguous float32/float64
arrays only (callers make them so); nothing here runs without CuPy.
"""

from __future__ import annotations

import functools

import numpy as np

from ddp.backend import cupy_module, cupy_unavailable_reason
from ddp.kernels import cuda_gemm
from ddp.kernels import reference as ref


def _cp():
    cp = cupy_module()
    if cp is None:  # dispatch never calls here without CuPy; this guards direct use
        raise RuntimeError(f"fused CUDA kernels need CuPy: {cupy_unavailable_reason()}")
    return cp


# ------------------------------------------------------------------------------------ Adam
@functools.cache
def _adam_kernel():
    return _cp().ElementwiseKernel(
        "T grad, T decay_scale, T one_minus_b1, T beta2, T one_minus_b2, T eps, T step_size, "
        "T bc2_sqrt, T wd, int32 decoupled, int32 maximize",
        "T param, T m, T v",
        """
        T g = maximize ? -grad : grad;
        if (decoupled) { param *= decay_scale; }
        else if (wd != (T)0) { g = g + param * wd; }
        m += (g - m) * one_minus_b1;
        v = v * beta2 + (g * one_minus_b2) * g;
        T denom = sqrt(v) / bc2_sqrt + eps;
        param -= (m / denom) * step_size;
        """,
        "ddp_adam_update",
    )


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps, weight_decay,
                decoupled, maximize) -> None:
    """Fused Adam/AdamW step in place (see ``reference.adam_update``)."""
    decoupled = bool(decoupled and weight_decay != 0)
    _adam_kernel()(
        grad, 1.0 - lr * weight_decay, 1.0 - beta1, beta2, 1.0 - beta2, eps,
        lr / (1.0 - beta1**step), (1.0 - beta2**step) ** 0.5, weight_decay,
        int(decoupled), int(bool(maximize)), param, exp_avg, exp_avg_sq,
    )


_ADAM_MULTI_SRC = r"""
extern "C" __global__ void ddp_adam_multi(
        const long long* table, int n, long long total, T decay_scale, T one_minus_b1, T beta2,
        T one_minus_b2, T eps, T step_size, T bc2_sqrt, T wd, int decoupled, int maximize) {
    // table: n cumulative end offsets, then 4 pointers (param, grad, m, v) per tensor
    const long long* ends = table;
    const long long* ptrs = table + n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int lo = 0, hi = n - 1;
        while (lo < hi) {  // the tensor holding element i: the first with ends[t] > i
            int mid = (lo + hi) >> 1;
            if (ends[mid] > i) hi = mid; else lo = mid + 1;
        }
        long long j = i - (lo ? ends[lo - 1] : 0);
        T* param = (T*)ptrs[4 * lo];
        const T* grad = (const T*)ptrs[4 * lo + 1];
        T* m = (T*)ptrs[4 * lo + 2];
        T* v = (T*)ptrs[4 * lo + 3];
        T g = maximize ? -grad[j] : grad[j];
        T p = param[j];
        if (decoupled) { p *= decay_scale; }
        else if (wd != (T)0) { g = g + p * wd; }
        T mj = m[j], vj = v[j];
        mj += (g - mj) * one_minus_b1;
        vj = vj * beta2 + (g * one_minus_b2) * g;
        T denom = sqrt(vj) / bc2_sqrt + eps;
        p -= (mj / denom) * step_size;
        m[j] = mj;
        v[j] = vj;
        param[j] = p;
    }
}
"""

_SGD_MULTI_SRC = r"""
extern "C" __global__ void ddp_sgd_multi(
        const long long* table, int n, long long total, T lr, T wd, T momentum,
        T one_minus_dampening, int nesterov, int maximize) {
    // table: n cumulative end offsets, then 3 pointers (param, grad, momentum buffer) per tensor
    const long long* ends = table;
    const long long* ptrs = table + n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int lo = 0, hi = n - 1;
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (ends[mid] > i) hi = mid; else lo = mid + 1;
        }
        long long j = i - (lo ? ends[lo - 1] : 0);
        T* param = (T*)ptrs[3 * lo];
        const T* grad = (const T*)ptrs[3 * lo + 1];
        T* buf = (T*)ptrs[3 * lo + 2];
        T p = param[j];
        T g = maximize ? -grad[j] : grad[j];
        if (wd != (T)0) g = p * wd + g;
        if (momentum != (T)0) {
            T b = buf[j] * momentum + g * one_minus_dampening;
            buf[j] = b;
            g = nesterov ? g + b * momentum : b;
        }
        param[j] = p - g * lr;
    }
}
"""

_TABLES: dict = {}  # pointer tuple -> device table (the last few; addresses repeat each step)


def _device_table(values: list[int]):
    cp = _cp()
    key = (cp.cuda.runtime.getDevice(), tuple(values))
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= 8:
            _TABLES.pop(next(iter(_TABLES)))
        table = _TABLES[key] = cp.asarray(np.asarray(values, dtype=np.int64))
    return table


def adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps,
                      weight_decay, decoupled, maximize) -> None:
    """Fused Adam/AdamW over many contiguous same-dtype tensors: one launch (multi-tensor)."""
    if not params:
        return
    cp = _cp()
    decoupled = bool(decoupled and weight_decay != 0)
    ends, ptrs, total = [], [], 0
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        total += p.size
        ends.append(total)
        ptrs += (p.data.ptr, g.data.ptr, m.data.ptr, v.data.ptr)
    if total == 0:
        return
    dtype = params[0].dtype
    t = dtype.type
    kernel = _row_kernel(_ADAM_MULTI_SRC, "ddp_adam_multi", _ctype(dtype))
    threads = 256
    blocks = int(min((total + threads - 1) // threads, 65536))
    kernel((blocks,), (threads,), (
        _device_table(ends + ptrs), cp.int32(len(params)), cp.int64(total),
        t(1.0 - lr * weight_decay), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(eps),
        t(lr / (1.0 - beta1**step)), t((1.0 - beta2**step) ** 0.5), t(weight_decay),
        cp.int32(decoupled), cp.int32(bool(maximize))))


def sgd_update_multi(params, grads, momentum_buffers, *, lr, weight_decay, momentum, dampening,
                     nesterov, maximize) -> None:
    """Fused SGD over many contiguous same-dtype tensors whose momentum buffers exist (or
    ``momentum == 0``): one launch."""
    if not params:
        return
    cp = _cp()
    ends, ptrs, total = [], [], 0
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        total += p.size
        ends.append(total)
        buf = momentum_buffers[i] if momentum != 0 else p  # never read without momentum
        ptrs += (p.data.ptr, g.data.ptr, buf.data.ptr)
    if total == 0:
        return
    dtype = params[0].dtype
    t = dtype.type
    kernel = _row_kernel(_SGD_MULTI_SRC, "ddp_sgd_multi", _ctype(dtype))
    blocks = int(min((total + 255) // 256, 65536))
    kernel((blocks,), (256,), (
        _device_table(ends + ptrs), cp.int32(len(params)), cp.int64(total), t(lr),
        t(weight_decay), t(momentum), t(1.0 - dampening), cp.int32(bool(nesterov)),
        cp.int32(bool(maximize))))


def column_sums(x2):
    """Sums over the rows of a 2-D ``x2``: one cuBLAS GEMV (``ddp.kernels.cuda_gemm``)."""
    return cuda_gemm.column_sums(x2)


# ------------------------------------------------------------------------------------ GELU
@functools.cache
def _gelu_kernels():
    cp = _cp()
    consts = (f"const T sqrt_half = (T){ref.SQRT_HALF!r}; "
              f"const T inv_sqrt_2pi = (T){ref.INV_SQRT_2PI!r}; "
              f"const T k = (T){ref.SQRT_2_OVER_PI!r}; const T c = (T){ref.GELU_TANH_C!r};")
    fwd_erf = cp.ElementwiseKernel(
        "T x", "T y, T saved",
        consts + "T cdf = ((T)1 + erf(x * sqrt_half)) * (T)0.5; saved = cdf; y = x * cdf;",
        "ddp_gelu_fwd_erf")
    fwd_tanh = cp.ElementwiseKernel(
        "T x", "T y, T saved",
        consts + "T t = tanh(k * (x + c * x * x * x)); saved = t; y = (T)0.5 * x * ((T)1 + t);",
        "ddp_gelu_fwd_tanh")
    bwd_erf = cp.ElementwiseKernel(
        "T grad, T x, T saved", "T gx",
        consts + "gx = (exp((T)-0.5 * x * x) * x * inv_sqrt_2pi + saved) * grad;",
        "ddp_gelu_bwd_erf")
    bwd_tanh = cp.ElementwiseKernel(
        "T grad, T x, T saved", "T gx",
        consts + "T d = k * ((T)1 + (T)3 * c * x * x);"
        "gx = grad * ((T)0.5 * ((T)1 + saved) + (T)0.5 * x * ((T)1 - saved * saved) * d);",
        "ddp_gelu_bwd_tanh")
    return {"none": (fwd_erf, bwd_erf), "tanh": (fwd_tanh, bwd_tanh)}


def gelu_forward(x, approximate: str):
    fwd, _ = _gelu_kernels()[approximate]
    return fwd(x)


def gelu_backward(grad, x, saved, approximate: str):
    _, bwd = _gelu_kernels()[approximate]
    return bwd(grad, x, saved)


# ------------------------------------------------------------------- row kernels (one block/row)
_BLOCK = 256  # threads per row; a multiple of the warp size (block_reduce relies on it)

_ROW_HELPERS = r"""
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
// Sum (is_max = 0) or max (is_max = 1) over the block; every thread gets the result.
__device__ T block_reduce(T v, T* buf, int is_max) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();  // buf may still be read by a previous call
    if (lane == 0) buf[wid] = v;
    __syncthreads();
    if (wid == 0) {
        T init = is_max ? buf[0] : (T)0;
        T w = lane < nw ? buf[lane] : init;
        w = is_max ? warp_max(w) : warp_sum(w);
        if (lane == 0) buf[0] = w;
    }
    __syncthreads();
    return buf[0];
}
"""

_LAYER_NORM_SRC = _ROW_HELPERS + r"""
extern "C" __global__ void ddp_layer_norm_fwd(
        const T* x, const T* w, const T* b, T* out, T* xhat, T* rstd_out,
        long long d, T eps, int has_w, int has_b) {
    __shared__ T buf[32];
    long long off = (long long)blockIdx.x * d;
    T s = 0;
    for (long long i = threadIdx.x; i < d; i += blockDim.x) s += x[off + i];
    T mean = block_reduce(s, buf, 0) / (T)d;
    T q = 0;
    for (long long i = threadIdx.x; i < d; i += blockDim.x) {
        T c = x[off + i] - mean;
        q += c * c;
    }
    T rstd = (T)1 / sqrt(block_reduce(q, buf, 0) / (T)d + eps);
    for (long long i = threadIdx.x; i < d; i += blockDim.x) {
        T h = (x[off + i] - mean) * rstd;
        xhat[off + i] = h;
        T o = has_w ? h * w[i] : h;
        out[off + i] = has_b ? o + b[i] : o;
    }
    if (threadIdx.x == 0) rstd_out[blockIdx.x] = rstd;
}

extern "C" __global__ void ddp_layer_norm_bwd(
        const T* grad, const T* xhat, const T* rstd, const T* w, T* gx, long long d, int has_w) {
    __shared__ T buf[32];
    long long off = (long long)blockIdx.x * d;
    T s1 = 0, s2 = 0;
    for (long long i = threadIdx.x; i < d; i += blockDim.x) {
        T gh = has_w ? grad[off + i] * w[i] : grad[off + i];
        s1 += gh;
        s2 += gh * xhat[off + i];
    }
    T mean_gh = block_reduce(s1, buf, 0) / (T)d;
    T mean_ghx = block_reduce(s2, buf, 0) / (T)d;
    T r = rstd[blockIdx.x];
    for (long long i = threadIdx.x; i < d; i += blockDim.x) {
        T gh = has_w ? grad[off + i] * w[i] : grad[off + i];
        gx[off + i] = (gh - mean_gh - xhat[off + i] * mean_ghx) * r;
    }
}
"""

_SOFTMAX_NLL_SRC = _ROW_HELPERS + r"""
extern "C" __global__ void ddp_softmax_nll(
        const T* x, const long long* target, T* prob, T* nll, long long c) {
    __shared__ T buf[32];
    long long off = (long long)blockIdx.x * c;
    T m = x[off];  // c >= 1: the caller skips empty rows
    for (long long i = threadIdx.x; i < c; i += blockDim.x) m = max(m, x[off + i]);
    m = block_reduce(m, buf, 1);
    T s = 0;
    for (long long i = threadIdx.x; i < c; i += blockDim.x) s += exp(x[off + i] - m);
    s = block_reduce(s, buf, 0);
    for (long long i = threadIdx.x; i < c; i += blockDim.x) prob[off + i] = exp(x[off + i] - m) / s;
    if (threadIdx.x == 0) nll[blockIdx.x] = log(s) - (x[off + target[blockIdx.x]] - m);
}
"""


_SOFTMAX_SRC = _ROW_HELPERS + r"""
extern "C" __global__ void ddp_softmax_fwd(const T* x, T* y, long long c) {
    __shared__ T buf[32];
    long long off = (long long)blockIdx.x * c;
    T m = x[off];
    for (long long i = threadIdx.x; i < c; i += blockDim.x) m = max(m, x[off + i]);
    m = block_reduce(m, buf, 1);
    T s = 0;
    for (long long i = threadIdx.x; i < c; i += blockDim.x) s += exp(x[off + i] - m);
    s = block_reduce(s, buf, 0);
    for (long long i = threadIdx.x; i < c; i += blockDim.x) y[off + i] = exp(x[off + i] - m) / s;
}

extern "C" __global__ void ddp_softmax_bwd(const T* g, const T* y, T* gx, long long c) {
    __shared__ T buf[32];
    long long off = (long long)blockIdx.x * c;
    T s = 0;
    for (long long i = threadIdx.x; i < c; i += blockDim.x) s += g[off + i] * y[off + i];
    s = block_reduce(s, buf, 0);
    for (long long i = threadIdx.x; i < c; i += blockDim.x)
        gx[off + i] = y[off + i] * (g[off + i] - s);
}
"""


def _row_threads(c: int) -> int:
    """Threads per row: a multiple of 32 up to ``_BLOCK``, no more than the row needs."""
    return min(_BLOCK, max(32, (c + 31) // 32 * 32))


def softmax_forward(x2):
    """Fused row softmax (one block per row)."""
    cp = _cp()
    x2 = cp.ascontiguousarray(x2)
    m, c = x2.shape
    y = cp.empty_like(x2)
    if m and c:
        kernel = _row_kernel(_SOFTMAX_SRC, "ddp_softmax_fwd", _ctype(x2.dtype))
        kernel((m,), (_row_threads(c),), (x2, y, cp.int64(c)))
    return y


def softmax_backward(grad2, y2):
    """Fused ``y * (grad - sum(grad * y))`` per row."""
    cp = _cp()
    grad2, y2 = cp.ascontiguousarray(grad2), cp.ascontiguousarray(y2)
    m, c = grad2.shape
    gx = cp.empty_like(grad2)
    if m and c:
        kernel = _row_kernel(_SOFTMAX_SRC, "ddp_softmax_bwd", _ctype(grad2.dtype))
        kernel((m,), (_row_threads(c),), (grad2, y2, gx, cp.int64(c)))
    return gx


@functools.cache
def _row_kernel(source: str, name: str, ctype: str):
    return _cp().RawKernel("typedef " + ctype + " T;\n" + source, name)


def _ctype(dtype) -> str:
    if dtype.name == "float32":
        return "float"
    if dtype.name == "float64":
        return "double"
    raise TypeError(f"fused row kernels support float32/float64, got {dtype}")


def layer_norm_forward(x2, weight, bias, eps: float):
    """Fused (M, D) layer norm: ``(out, xhat, rstd)``, rstd of shape (M, 1)."""
    cp = _cp()
    x2 = cp.ascontiguousarray(x2)
    m, d = x2.shape
    out, xhat = cp.empty_like(x2), cp.empty_like(x2)
    rstd = cp.empty((m, 1), dtype=x2.dtype)
    dummy = x2  # never read when the flag says absent
    w = cp.ascontiguousarray(weight).reshape(-1) if weight is not None else dummy
    b = cp.ascontiguousarray(bias).reshape(-1) if bias is not None else dummy
    if m:
        kernel = _row_kernel(_LAYER_NORM_SRC, "ddp_layer_norm_fwd", _ctype(x2.dtype))
        kernel((m,), (_BLOCK,), (x2, w, b, out, xhat, rstd, cp.int64(d), x2.dtype.type(eps),
                                  cp.int32(weight is not None), cp.int32(bias is not None)))
    return out, xhat, rstd


def layer_norm_backward_input(grad2, xhat, rstd, weight):
    cp = _cp()
    grad2 = cp.ascontiguousarray(grad2)
    m, d = grad2.shape
    gx = cp.empty_like(grad2)
    w = cp.ascontiguousarray(weight).reshape(-1) if weight is not None else grad2
    if m:
        kernel = _row_kernel(_LAYER_NORM_SRC, "ddp_layer_norm_bwd", _ctype(grad2.dtype))
        kernel((m,), (_BLOCK,), (grad2, cp.ascontiguousarray(xhat), cp.ascontiguousarray(rstd),
                                  w, gx, cp.int64(d), cp.int32(weight is not None)))
    return gx


def softmax_nll(x2, target):
    """Fused row softmax and ``logsumexp - x[target]``: ``(prob, nll)``."""
    cp = _cp()
    x2 = cp.ascontiguousarray(x2)
    m, c = x2.shape
    prob = cp.empty_like(x2)
    nll = cp.empty((m,), dtype=x2.dtype)
    if m and c:
        kernel = _row_kernel(_SOFTMAX_NLL_SRC, "ddp_softmax_nll", _ctype(x2.dtype))
        kernel((m,), (_BLOCK,), (x2, cp.ascontiguousarray(target, dtype=cp.int64), prob, nll,
                                  cp.int64(c)))
    return prob, nll
