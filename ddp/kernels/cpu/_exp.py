"""A vectorisable float32 ``exp`` for compiled loops (numba has no vector math library here: a
loop calling ``math.exp`` makes one scalar libm call per element).

Cephes' ``expf``: ``exp(a) = 2^n * exp(r)`` with ``n = round(a / ln 2)``, ``r = a - n ln 2``
(a two-constant Cody-Waite split), a degree-7 polynomial for ``exp(r)`` on ``|r| <= ln(2) / 2``
and ``2^n`` built from its bits; all in float32, 8 lanes per AVX2 instruction. fastmath's
reassociation may merge the split into float32's ``ln 2`` (measured: it does), which costs
``|n| * 1.9e-9`` in ``r``: within 5 ulp of ``exp`` over ``[-87.3, 0]``, 2 ulp over ``[-20, 0]``
(a float64 ``r`` keeps 2 ulp everywhere but runs at half the speed).
"""

from __future__ import annotations

import numpy as np

from ddp.kernels.jit import inlined

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # 9 significant bits: n * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_FLOOR = np.float32(-87.3)  # 2^n stays a normal float32 above this (exp(-87.3) = 1.3e-38)
_P0, _P1, _P2, _P3, _P4, _P5 = (np.float32(c) for c in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
    5.0000001201e-1))


@inlined
def exp_nonpositive_float32(a):
    """``exp(a)`` of a float32 ``a <= 0``: 0 below -87.3 (flushing float32's subnormal tail,
    below 1.3e-38), 0 at -inf, NaN at NaN; positive ``a`` are out of contract."""
    b = a if a > _FLOOR else _FLOOR
    n = np.floor(b * _LOG2E + np.float32(0.5))
    r = b - n * _LN2_HI - n * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + np.float32(1.0)
    p = p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    if a < _FLOOR:
        p = np.float32(0.0)
    if a != a:
        p = a
    return p
