"""Compiled 2x2 max pooling over tiling windows (``max_pool2d(x, 2)``: stride 2, no padding).

Forward keeps, per window, the uint8 row-major offset (0-3) of its first maximum (torch's tie
rule; a NaN wins over numbers); backward writes every input element once: the window's
gradient at that offset, zero elsewhere and on a last odd row / column the tiles do not cover.
Both loop over a range of (image, channel) planes on the rank's threads with unsigned counters
(see ``cpu.conv``) and no branches: the selections are arithmetic, since on random data a
branch per window is mispredicted half the time (4.5x slower).
"""

from __future__ import annotations

import numpy as np

from ddp.kernels.jit import compiled
from ddp.kernels.parallel import MIN_PER_THREAD, for_ranges


@compiled
def _max2x2_range(x, out, index, height, width, ho, wo, start, stop):
    uw, one, two = np.uint64(width), np.uint64(1), np.uint64(2)
    for p in range(np.uint64(start), np.uint64(stop)):
        plane = p * np.uint64(height) * uw
        for oh in range(np.uint64(ho)):
            r0 = plane + oh * two * uw
            r1 = r0 + uw
            dst = (p * np.uint64(ho) + oh) * np.uint64(wo)
            for ow in range(np.uint64(wo)):
                c = ow * two
                a0, a1 = x[r0 + c], x[r0 + c + one]
                b0, b1 = x[r1 + c], x[r1 + c + one]
                ta = np.uint8((a1 > a0) | (a1 != a1))  # 1: the second of the top row wins
                tb = np.uint8((b1 > b0) | (b1 != b1))
                ma, mb = np.maximum(a0, a1), np.maximum(b0, b1)
                tt = np.uint8((mb > ma) | ((mb != mb) & (ma == ma)))  # 1: bottom row wins
                out[dst + ow] = np.maximum(ma, mb)
                index[dst + ow] = tt * (np.uint8(2) + tb) + (np.uint8(1) - tt) * ta


@compiled
def _max2x2_backward_range(grad, index, out, height, width, ho, wo, start, stop):
    uw, one, two = np.uint64(width), np.uint64(1), np.uint64(2)
    zero = out.dtype.type(0)
    for p in range(np.uint64(start), np.uint64(stop)):
        plane = p * np.uint64(height) * uw
        for oh in range(np.uint64(ho)):
            r0 = plane + oh * two * uw
            r1 = r0 + uw
            src = (p * np.uint64(ho) + oh) * np.uint64(wo)
            for ow in range(np.uint64(wo)):
                c = ow * two
                at, g = index[src + ow], grad[src + ow]
                out[r0 + c] = g if at == 0 else zero
                out[r0 + c + one] = g if at == 1 else zero
                out[r1 + c] = g if at == 2 else zero
                out[r1 + c + one] = g if at == 3 else zero
            if np.uint64(width) > two * np.uint64(wo):  # odd width: the last column
                out[r0 + uw - one] = zero
                out[r1 + uw - one] = zero
        if np.uint64(height) > two * np.uint64(ho):  # odd height: the last row
            last = plane + (np.uint64(height) - one) * uw
            for k in range(uw):
                out[last + k] = zero


def _planes_per_thread(h, w):
    return max(1, MIN_PER_THREAD // max(1, h * w))


def max_pool2d_tiles(x, kernel):
    """``(out, index)``: the maximum over each 2x2 tile of the NCHW ``x`` (a last odd row /
    column ignored) and the uint8 row-major offset of its first maximum; None where this kernel
    does not apply (other kernels, a strided ``x``)."""
    if tuple(kernel) != (2, 2) or not x.flags.c_contiguous:
        return None
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    index = np.empty((n, c, ho, wo), dtype=np.uint8)
    flat, out_flat, index_flat = x.reshape(-1), out.reshape(-1), index.reshape(-1)
    for_ranges(n * c, lambda start, stop: _max2x2_range(
        flat, out_flat, index_flat, h, w, ho, wo, start, stop),
        min_per_thread=_planes_per_thread(h, w))
    return out, index


def max_pool2d_tiles_backward(grad, index, x_shape, kernel):
    """The input gradient of :func:`max_pool2d_tiles` (``index`` its second result)."""
    n, c, h, w = x_shape
    ho, wo = index.shape[2:]
    grad = np.ascontiguousarray(grad)
    out = np.empty(x_shape, dtype=grad.dtype)
    g, i, o = grad.reshape(-1), index.reshape(-1), out.reshape(-1)
    for_ranges(n * c, lambda start, stop: _max2x2_backward_range(
        g, i, o, h, w, ho, wo, start, stop), min_per_thread=_planes_per_thread(h, w))
    return out
