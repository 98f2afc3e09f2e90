"""``ddp.backends.mps``: Apple's Metal backend, which ddp does not have."""

from __future__ import annotations


def is_available() -> bool:
    """False: ddp runs on the CPU (NumPy) and CUDA (CuPy) only."""
    return False


def is_built() -> bool:
    """False: ddp has no MPS code path."""
    return False
