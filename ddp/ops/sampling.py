"""``multinomial``: draw category indices from rows of non-negative weights.

Draws come from ddp's generators (``generator=`` or this thread's default), on the host, like
every random factory of ddp; a result for a GPU input is copied to its device. Without
replacement, the exponential race (the ``k`` largest ``w_i / E_i``, ``E_i ~ Exp(1)``) draws
each ordered ``k``-tuple with the probability of drawing it one by one (torch uses the same
method).
"""

from __future__ import annotations

import numpy as np

from ddp import dtypes, random
from ddp.autograd import tensor_type
from ddp.backend import get_array_module, to_numpy
from ddp.device import device_of, move_array


def _weights(input) -> np.ndarray:  # noqa: A002
    if input.ndim not in (1, 2):
        raise RuntimeError(f"prob_dist must be 1 or 2 dim, got {input.ndim}-D tensor")
    if not dtypes.is_floating(input.array.dtype):
        raise RuntimeError(f"multinomial only supports floating-point dtypes for input, got: "
                           f"{input.dtype}")
    w = to_numpy(input.array).astype(np.float64).reshape(-1, input.shape[-1])
    if not np.isfinite(w).all() or (w < 0).any():
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if (w.sum(axis=1) <= 0).any():
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return w


def multinomial(input, num_samples: int, replacement: bool = False, *,  # noqa: A002
                generator=None, out=None):
    """Indices drawn by the weights in each row of ``input`` (1-D: one row).

    Returns int64 of shape ``(num_samples,)`` or ``(rows, num_samples)``. Without replacement
    every index appears at most once per row; zero weights are drawn only once the positive
    ones are used up (torch 2.13 draws them too rather than raising), lowest index first.
    """
    if out is not None:
        raise NotImplementedError("multinomial(out=...) is not supported")
    w = _weights(input)
    k = int(num_samples)
    n = w.shape[1]
    if k <= 0:
        raise RuntimeError(f"cannot sample n_sample <= 0 samples (got {k})")
    rng = (generator or random.default_generator()).numpy
    if replacement:
        cdf = np.cumsum(w, axis=1)
        draws = rng.random((w.shape[0], k)) * cdf[:, -1:]
        picked = np.stack([np.searchsorted(cdf[r], draws[r], side="right")
                           for r in range(w.shape[0])])
        # a draw rounded up to the total must still land on the last category with weight
        last = n - 1 - np.argmax(w[:, ::-1] > 0, axis=1)
        picked = np.minimum(picked, last[:, None])
    else:
        if k > n:
            raise RuntimeError("cannot sample n_sample > prob_dist.size(-1) samples without "
                               "replacement")
        keys = w / rng.exponential(size=w.shape)
        picked = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    picked = picked.astype(np.int64)
    if input.ndim == 1:
        picked = picked[0]
    if get_array_module(input.array) is not np:
        picked = move_array(picked, device_of(input.array))
    return tensor_type.Tensor._from_op(picked, None)
