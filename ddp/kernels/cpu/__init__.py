"""Compiled CPU kernels (numba, see ``ddp.kernels.jit``): the fast path on NumPy arrays.

``ddp.kernels`` sends float32/float64 NumPy arrays here when :func:`ddp.kernels.jit.available`;
every function has the signature and the contract of its namesake in ``ddp.kernels.reference``,
which stays the formulas' reference (tests hold both to the same float64 truth). A kernel is a
loop over ``[start, stop)`` of flat contiguous arrays, compiled without the GIL and run on the
rank's threads by ``ddp.kernels.parallel.for_ranges``: one pass over memory where NumPy makes a
pass per operation. Inputs a kernel does not cover (other dtypes, strided arrays) take the
reference; so do the functions listed below as taken from it unchanged.

One file per family of kernels: ``activations`` (GELU), ``rows`` (layer norm, softmax,
softmax + NLL), ``optim_adam`` (Adam/AdamW), ``optim_sgd`` (SGD), ``batchnorm``, ``conv``
(im2col, col2im), ``pointwise`` (ReLU), ``pooling`` (max pooling).
"""

from ddp.kernels import reference
from ddp.kernels.cpu.activations import gelu_backward, gelu_forward
from ddp.kernels.cpu.batchnorm import (
    batch_norm_apply,
    batch_norm_backward,
    batch_norm_grad_input,
    batch_norm_grad_sums,
    batch_norm_stats,
    batch_norm_train_forward,
)
from ddp.kernels.cpu.conv import col2im, im2col
from ddp.kernels.cpu.optim_adam import adam_update, adam_update_multi
from ddp.kernels.cpu.optim_sgd import sgd_update_multi
from ddp.kernels.cpu.pointwise import relu_backward, relu_forward
from ddp.kernels.cpu.pooling import max_pool2d_tiles, max_pool2d_tiles_backward
from ddp.kernels.cpu.rows import (
    layer_norm_backward_input,
    layer_norm_forward,
    softmax_backward,
    softmax_forward,
    softmax_nll,
)

# Unchanged from the reference (no compiled form yet).
column_sums = reference.column_sums

__all__ = ["adam_update", "adam_update_multi", "batch_norm_apply", "batch_norm_backward",
           "batch_norm_grad_input", "batch_norm_grad_sums", "batch_norm_stats",
           "batch_norm_train_forward", "column_sums", "gelu_backward", "gelu_forward",
           "layer_norm_backward_input", "layer_norm_forward", "sgd_update_multi",
           "softmax_backward", "softmax_forward", "softmax_nll"]
__all__ += ["col2im", "im2col", "max_pool2d_tiles", "max_pool2d_tiles_backward", "relu_backward",
            "relu_forward"]
