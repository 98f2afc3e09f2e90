"""Moved to :mod:`ddp.kernels.parallel`; this name stays for old imports only."""

from ddp.kernels.parallel import _MIN_PER_THREAD, for_ranges, num_threads  # noqa: F401
