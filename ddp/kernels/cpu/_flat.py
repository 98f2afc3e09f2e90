"""Shared helpers of the compiled kernels."""


def flat_or_none(array):
    """``array`` as a 1-D view when it is C-contiguous (a kernel can walk it), else None."""
    return array.reshape(-1) if array.flags.c_contiguous else None
