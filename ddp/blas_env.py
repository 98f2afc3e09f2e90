"""Imported first by ``import ddp``: OpenBLAS's settings, before NumPy loads OpenBLAS.

See :func:`ddp.config.default_blas_env` (importing this module calls it, once).
"""

from ddp import config

config.default_blas_env()
