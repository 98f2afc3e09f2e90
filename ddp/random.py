"""Random numbers: ``manual_seed``, ``Generator`` and the default generator of each thread.

Each thread has its own default generator, seeded with torch's default seed until
``manual_seed`` is called in it. In the ``threads`` distributed backend every rank is a thread,
so each rank draws the same numbers as it would as an MPI process. State: per thread
only (a new thread's generator starts from the default seed, not from its parent's state).
"""

from __future__ import annotations

import threading

import numpy as np

from ddp.device import as_device

DEFAULT_SEED = 67280421310721  # torch.initial_seed() of a fresh process

_local = threading.local()


class Generator:
    """A seedable source of random numbers (``ddp.Generator().manual_seed(0)``).

    ``device`` is recorded (``g.device``) as torch does; every generator draws on the host, and
    factories copy to the device they are asked for, so a seed gives the same numbers anywhere.
    """

    def __init__(self, device="cpu"):
        self.device = as_device(device)
        self._seed = DEFAULT_SEED
        self._rng = np.random.Generator(np.random.PCG64(self._seed))

    def manual_seed(self, seed: int) -> Generator:
        self._seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self._seed))
        return self

    def seed(self) -> int:
        seed = int(np.random.SeedSequence().entropy % (2**63))
        self.manual_seed(seed)
        return seed

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state

    @property
    def numpy(self) -> np.random.Generator:
        """The NumPy generator behind this one."""
        return self._rng


def default_generator() -> Generator:
    """This thread's default generator."""
    gen = getattr(_local, "generator", None)
    if gen is None:
        gen = _local.generator = Generator()
    return gen


def manual_seed(seed: int) -> Generator:
    """Seed this thread's default generator (and CuPy's, when CuPy is in use)."""
    return default_generator().manual_seed(seed)


def seed() -> int:
    return default_generator().seed()


def initial_seed() -> int:
    return default_generator().initial_seed()


def get_rng_state() -> dict:
    return default_generator().get_state()


def set_rng_state(state: dict) -> None:
    default_generator().set_state(state)


def _rng(generator: Generator | None) -> np.random.Generator:
    return (generator or default_generator()).numpy


def uniform_array(shape, low, high, dtype, generator=None) -> np.ndarray:
    """Host array of uniform samples in ``[low, high)``."""
    rng = _rng(generator)
    if np.dtype(dtype) in (np.float32, np.float64):
        out = rng.random(shape, dtype=dtype)
    else:
        out = rng.random(shape).astype(dtype)
    if low != 0.0 or high != 1.0:
        out *= high - low
        out += low
    return out


def normal_array(shape, mean, std, dtype, generator=None) -> np.ndarray:
    """Host array of normal samples."""
    rng = _rng(generator)
    if np.dtype(dtype) in (np.float32, np.float64):
        out = rng.standard_normal(shape, dtype=dtype)
    else:
        out = rng.standard_normal(shape).astype(dtype)
    if std != 1.0:
        out *= std
    if mean != 0.0:
        out += mean
    return out


def integers_array(low, high, shape, generator=None) -> np.ndarray:
    return _rng(generator).integers(low, high, size=shape, dtype=np.int64)


def permutation_array(n: int, generator=None) -> np.ndarray:
    return _rng(generator).permutation(n).astype(np.int64)


def weighted_sample_array(cumulative: np.ndarray, count: int, generator=None) -> np.ndarray:
    """``count`` indices drawn with replacement, index ``i`` with probability proportional to
    its weight, given the weights' running sum ``cumulative`` (positive total)."""
    total = cumulative[-1]
    draws = _rng(generator).random(count) * total
    indices = np.searchsorted(cumulative, draws, side="right")
    # a draw that rounds up to the total would land past the end: it belongs to the last index
    # with weight (the one where the running sum reaches the total)
    return np.minimum(indices, np.searchsorted(cumulative, total)).astype(np.int64)


def weighted_choice_array(weights: np.ndarray, count: int, generator=None) -> np.ndarray:
    """``count`` distinct indices drawn without replacement with probabilities proportional to
    ``weights``: the largest ``weight / E`` with ``E`` exponential, torch's algorithm (so once
    the positive weights are used up, zero-weight indices follow in index order, as in torch)."""
    keys = weights / _rng(generator).standard_exponential(len(weights))
    return np.argsort(-keys, kind="stable")[:count].astype(np.int64)
