"""A vectorised error function for NumPy/CuPy arrays (NumPy has none).

W. J. Cody's rational Chebyshev approximations (Math. Comp. 23, 1969; the CALERF routine):
three ranges, |x| <= 0.5, 0.5 < |x| <= 4 and |x| > 4, each a ratio of polynomials, with
maximal relative error below 1e-16 in float64. The dtype of the input is kept (float32 stays
float32); each element is evaluated only by the branch of its range.
"""

from __future__ import annotations

from ddp.backend import get_array_module

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
    num = _A[4] * ysq
    den = ysq
    for i in range(3):
        num = (num + _A[i]) * ysq
        den = (den + _B[i]) * ysq
    return x * (num + _A[3]) / (den + _B[3])


def _erfc_scaled_exp(y, xp):
    """exp(-y*y) computed as exp(-r*r) * exp(-(y-r)(y+r)) with r = y rounded to 1/16.

    Splitting the square keeps the exponent exact enough for the relative accuracy of erfc.
    """
    r = xp.floor(y * 16.0) / 16.0
    return xp.exp(-r * r) * xp.exp(-(y - r) * (y + r))


def _medium(y, xp):
    """erfc(y) for 0.5 < y <= 4."""
    num = _C[8] * y
    den = y
    for i in range(7):
        num = (num + _C[i]) * y
        den = (den + _D[i]) * y
    return _erfc_scaled_exp(y, xp) * (num + _C[7]) / (den + _D[7])


def _large(y, xp):
    """erfc(y) for y > 4."""
    ysq = 1.0 / (y * y)
    num = _P[5] * ysq
    den = ysq
    for i in range(4):
        num = (num + _P[i]) * ysq
        den = (den + _Q[i]) * ysq
    result = (_ONE_OVER_SQRT_PI - ysq * (num + _P[4]) / (den + _Q[4])) / y
    return _erfc_scaled_exp(y, xp) * result


def erf(x):
    """Elementwise error function of a floating array, in its own dtype."""
    xp = get_array_module(x)
    y = xp.abs(x)
    small = y <= 0.5
    if small.all():
        return _small(x)
    out = xp.empty_like(x)
    out[small] = _small(x[small])
    medium = ~small & (y <= 4.0)
    if medium.any():
        ym = y[medium]
        out[medium] = 1.0 - _medium(ym, xp)
    large = y > 4.0
    if large.any():
        # erfc underflows to 0 past ~26.5 (erf is then exactly 1); clipping keeps inf finite.
        yl = xp.minimum(y[large], 30.0)
        with _quiet(xp):
            out[large] = 1.0 - _large(yl, xp)
    negative = ~small & (x < 0)
    out[negative] = -out[negative]
    nan = xp.isnan(x)
    if nan.any():
        out[nan] = xp.nan
    return out


class _quiet:
    def __init__(self, xp):
        self.xp = xp
        self.state = None

    def __enter__(self):
        if hasattr(self.xp, "seterr"):
            self.state = self.xp.seterr(over="ignore", under="ignore")

    def __exit__(self, *exc):
        if self.state is not None:
            self.xp.seterr(**self.state)
        return False
