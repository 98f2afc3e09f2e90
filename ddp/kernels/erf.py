"""The error function for NumPy/CuPy arrays (NumPy has none), and its inverse.

W. J. Cody's rational Chebyshev approximations (Math. Comp. 23, 1969; the CALERF routine):
three ranges, |x| <= 0.5, 0.5 < |x| <= 4 and |x| > 4, each a ratio of polynomials, with
maximal relative error below 1e-16 in float64. The dtype of the input is kept (float32 stays
float32); each element is evaluated only by the branch of its range.
"""

from __future__ import annotations

import math

import numpy as np

from ddp.backend import get_array_module
from ddp.kernels.parallel import for_ranges

_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
_ONE_OVER_SQRT_PI = 5.6418958354775628695e-1


def _small(x):
    """erf(x) for |x| <= 0.5."""
    ysq = x * x
    num = ysq * _A[4]
    den = ysq + _B[0]
    num += _A[0]
    num *= ysq
    den *= ysq
    for i in (1, 2):
        num += _A[i]
        num *= ysq
        den += _B[i]
        den *= ysq
    num += _A[3]
    den += _B[3]
    num /= den
    num *= x
    return num


def _exp_minus_square(y, xp):
    """exp(-y*y); in float64 as exp(-r*r) * exp(-(y-r)(y+r)) with r = y rounded down to 1/16.

    Splitting the square keeps the exponent exact enough for erfc's float64 relative accuracy;
    in float32 the rounding of y*y costs less than the float32 precision of erf itself.
    """
    if y.dtype.itemsize < 8:
        e = y * y
        e *= -1.0
        return xp.exp(e, out=e)
    r = xp.floor(y * 16.0)
    r /= 16.0
    d = (y - r) * (y + r)
    r *= r
    r += d
    r *= -1.0
    return xp.exp(r, out=r)


def _erfc_medium(y, xp):
    """erfc(y) for 0.5 <= y <= 4."""
    num = y * _C[8]
    num += _C[0]
    num *= y
    den = y + _D[0]
    den *= y
    for i in range(1, 7):
        num += _C[i]
        num *= y
        den += _D[i]
        den *= y
    num += _C[7]
    den += _D[7]
    num /= den
    num *= _exp_minus_square(y, xp)
    return num


def _erfc_large(y, xp):
    """erfc(y) for y >= 4."""
    ysq = 1.0 / (y * y)
    num = ysq * _P[5]
    den = ysq.copy()
    for i in range(4):
        num += _P[i]
        num *= ysq
        den += _Q[i]
        den *= ysq
    num += _P[4]
    den += _Q[4]
    num /= den
    num *= ysq
    result = _ONE_OVER_SQRT_PI - num
    result /= y
    result *= _exp_minus_square(y, xp)
    return result


_BLOCK = 1 << 15  # elements per block: the ~10 temporaries of a block stay in cache


def erf(x):
    """Elementwise error function of a floating array, in its own dtype.

    Large NumPy arrays are processed in cache-sized blocks: the evaluation makes dozens of
    elementwise passes, which would otherwise each stream the whole array through memory.
    float32 NumPy arrays take a shorter single-rational path (``_erf_float32``).
    """
    xp = get_array_module(x)
    if xp.__name__ == "numpy" and x.dtype == np.float32:
        return _erf_float32(x)
    if xp.__name__ != "numpy" or x.size <= 2 * _BLOCK:
        return _erf_block(x)
    flat = x.reshape(-1)
    out = xp.empty(flat.shape, dtype=x.dtype)
    for start in range(0, flat.size, _BLOCK):
        out[start:start + _BLOCK] = _erf_block(flat[start:start + _BLOCK])
    return out.reshape(x.shape)


# erf(x) ~ x * alpha(x^2) / beta(x^2) on [-4, 4] (Eigen's float erf, also XLA's): one rational,
# no branches and no exp. Absolute error 6.5e-8 when evaluated in float64, so the rounded float32
# result is within ~1e-7 (float32 Horner arithmetic would lose up to 4.4e-7 near |x| = 3).
ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
         -7.37332916720468e-03, -1.42647390514189e-02)
_BLOCK32 = 1 << 16  # bounds the four float64 work buffers (larger blocks: fewer calls)


def _erf_float32(x):
    """erf of a float32 NumPy array, in float64 work buffers one cache-sized block at a time."""
    flat = x.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    for_ranges(flat.size, lambda start, stop: erf_float32_range(flat, out, start, stop))
    return out.reshape(x.shape)


def erf_float32_range(flat, out, begin: int, end: int, scale: float = 1.0,
                       buffers: list | None = None) -> None:
    """``out[begin:end] = erf(scale * flat[begin:end])`` for float32 ``flat`` (see above).

    ``buffers``: four float64 work arrays of at least ``min(_BLOCK32, end - begin)`` elements.
    """
    size = min(_BLOCK32, end - begin)
    if buffers is None:
        buffers = float32_work_buffers(size)
    for start in range(begin, end, size):
        stop = min(start + size, end)
        v, v2, num, den = (b[:stop - start] for b in buffers)
        # |erf| rounds to 1 in float32 beyond 4
        np.clip(flat[start:stop], -4.0 / scale, 4.0 / scale, out=v)
        if scale != 1.0:
            v *= scale
        np.multiply(v, v, out=v2)
        np.multiply(v2, ALPHA[0], out=num)
        num += ALPHA[1]
        for a in ALPHA[2:]:
            num *= v2
            num += a
        num *= v
        np.multiply(v2, BETA[0], out=den)
        den += BETA[1]
        for b in BETA[2:]:
            den *= v2
            den += b
        np.divide(num, den, out=out[start:stop])  # float64 -> float32 on the way out


def float32_work_buffers(size: int) -> list:
    """The four float64 work arrays ``erf_float32_range`` needs for blocks of ``size``."""
    return [np.empty(size, dtype=np.float64) for _ in range(4)]


def _erf_block(x):
    """erf of one block (see ``erf``).

    Every range is evaluated on the whole (clipped) array and the results are selected with
    ``where``: a few more flops than masking, but no gathers and scatters, which dominate in
    NumPy. In float32 (and float16) erfc(4) is below half an ulp of 1, so |x| > 4 needs no
    third branch there.
    """
    xp = get_array_module(x)
    y = xp.abs(x)
    small = y <= 0.5
    large = (y > 4.0) if x.dtype.itemsize >= 8 else None
    if small.all():
        return _small(x)
    result = _erfc_medium(xp.clip(y, 0.5, 4.0, out=y), xp)  # y is not needed unclipped
    if large is not None and large.any():
        # erfc underflows to 0 past ~26.5 (erf is then exactly 1); clipping keeps inf finite.
        xp.copyto(result, _erfc_large(xp.clip(xp.abs(x), 4.0, 30.0), xp), where=large)
    result *= -1.0
    result += 1.0
    xp.copysign(result, x, out=result)
    if small.any():
        with _quiet(xp):  # _small overflows (harmlessly) on the infinite elements it skips
            xp.copyto(result, _small(x), where=small)
    return result


def erfinv(y):
    """Inverse error function of a NumPy array in (-1, 1), by Newton's method on ``erf``.

    The start is Giles' single-precision approximation; two Newton steps bring it to float64
    accuracy.
    """
    w = -np.log((1.0 - y) * (1.0 + y))
    small = w < 5.0
    ws = w - 2.5
    wl = np.sqrt(np.maximum(w, 5.0)) - 3.0
    ps = 2.81022636e-08
    for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
              -0.00417768164, 0.246640727, 1.50140941):
        ps = c + ps * ws
    pl = -0.000200214257
    for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
              0.00943887047, 1.00167406, 2.83297682):
        pl = c + pl * wl
    x = np.where(small, ps, pl) * y
    for _ in range(2):
        err = erf(x) - y
        x = x - err / (2.0 / math.sqrt(math.pi) * np.exp(-x * x))
    return x


class _quiet:
    """Silence NumPy floating-point warnings for a block (CuPy does not warn)."""

    def __init__(self, xp):
        self.xp = xp
        self.state = None

    def __enter__(self):
        if hasattr(self.xp, "seterr"):
            self.state = self.xp.seterr(over="ignore", under="ignore", invalid="ignore")

    def __exit__(self, *exc):
        if self.state is not None:
            self.xp.seterr(**self.state)
        return False
