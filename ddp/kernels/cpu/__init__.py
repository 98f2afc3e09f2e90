"""Compiled CPU kernels (numba, see ``ddp.kernels.jit``): the fast path on NumPy arrays.

``ddp.kernels`` sends float32/float64 NumPy arrays here when :func:`ddp.kernels.jit.available`;
every function has the signature and the contract of its namesake in ``ddp.kernels.reference``,
which stays the formulas' reference (tests hold both to the same float64 truth). A kernel is a
loop over ``[start, stop)`` of flat contiguous arrays, compiled without the GIL and run on the
rank's threads by ``ddp.kernels.parallel.for_ranges``: one pass over memory where NumPy makes a
pass per operation. Inputs a kernel does not cover (other dtypes, strided arrays) take the
reference; so do the functions listed below as taken from it unchanged.

One file per family of kernels: ``activations`` (GELU), ``batchnorm``,
``optim_sgd``.
"""

from ddp.kernels import reference
from ddp.kernels.cpu.activations import gelu_forward
from ddp.kernels.cpu.batchnorm import (
    batch_norm_apply,
    batch_norm_backward,
    batch_norm_grad_input,
    batch_norm_grad_sums,
    batch_norm_stats,
    batch_norm_train_forward,
)
from ddp.kernels.cpu.optim_sgd import sgd_update_multi

# Unchanged from the reference (no compiled form yet).
adam_update = reference.adam_update
adam_update_multi = reference.adam_update_multi
column_sums = reference.column_sums
gelu_backward = reference.gelu_backward
layer_norm_forward = reference.layer_norm_forward
layer_norm_backward_input = reference.layer_norm_backward_input
softmax_forward = reference.softmax_forward
softmax_backward = reference.softmax_backward
softmax_nll = reference.softmax_nll

__all__ = ["adam_update", "adam_update_multi", "batch_norm_apply", "batch_norm_backward",
           "batch_norm_grad_input", "batch_norm_grad_sums", "batch_norm_stats",
           "batch_norm_train_forward", "column_sums", "gelu_backward", "gelu_forward",
           "layer_norm_backward_input", "layer_norm_forward", "sgd_update_multi",
           "softmax_backward", "softmax_forward", "softmax_nll"]
