"""A tiny stand-in for ``torchvision`` (not installed here, and never downloaded in CI) with
the datasets, transforms and utils the vendored programs use.

Datasets hold deterministic random images of the real shapes and dtypes (a NumPy generator
seeded by the dataset's name and split), so every run of a program, under torch or under ddp,
sees the same pixels. Transforms produce tensors of whichever framework ``torch`` names in the
running process (real torch, or ddp through the compatibility alias).
"""

from . import datasets, transforms, utils

__version__ = "0.0-compat-shim"
__all__ = ["datasets", "transforms", "utils"]
