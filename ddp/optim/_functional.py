"""Pure update rules over lists of arrays: SGD and Adam/AdamW steps, torch's exactly.

Each function updates parameter (and state) arrays in place; the formulas live in
``ddp.kernels`` (``reference.py`` is the CPU path, beside the fused GPU kernels), where in-place
ufuncs (``out=``) keep a step to at most one scratch array per parameter. Hyperparameters are
Python floats: a NumPy ``float64`` scalar would silently upcast ``float32`` arrays. Every array
is NumPy or CuPy.

The formulas mirror ``torch.optim.sgd._single_tensor_sgd`` and
``torch.optim.adam._single_tensor_adam``, the paths torch takes for CPU tensors.
"""

from __future__ import annotations

import numpy as np

from ddp import kernels


def sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, weight_decay: float,
        momentum: float, dampening: float, nesterov: bool, maximize: bool) -> None:
    """One SGD step over parallel lists of parameter and gradient arrays.

    ``momentum_buffers[i]`` is None before the first step with momentum; it is replaced by the
    new buffer (a copy of the first gradient), and updated in place afterwards. The maths is
    ``ddp.kernels``' (the reference on a CPU, one multi-tensor launch on a GPU).
    """
    kernels.sgd_update_multi(params, grads, momentum_buffers, lr=lr, weight_decay=weight_decay,
                             momentum=momentum, dampening=dampening, nesterov=nesterov,
                             maximize=maximize)


def adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, max_exp_avg_sqs: list,
         state_steps: list, *, amsgrad: bool, beta1: float, beta2: float, lr: float,
         weight_decay: float, eps: float, maximize: bool, decoupled_weight_decay: bool) -> None:
    """One Adam (or AdamW, with ``decoupled_weight_decay``) step over lists of arrays.

    ``state_steps`` are 0-d float32 arrays (torch keeps ``step`` as a float32 tensor),
    incremented in place. ``max_exp_avg_sqs`` is used only when ``amsgrad``.
    """
    lr, weight_decay, eps = float(lr), float(weight_decay), float(eps)
    beta1, beta2 = float(beta1), float(beta2)
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay,
             "decoupled": decoupled_weight_decay, "maximize": maximize}
    steps = []
    for step_t in state_steps:
        step_t += 1
        steps.append(float(step_t))
    if amsgrad:  # no multi-tensor kernel: one update per tensor (the reference path)
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            kernels.adam_update(param, grad, exp_avgs[i], exp_avg_sqs[i], step=steps[i],
                                max_exp_avg_sq=max_exp_avg_sqs[i], **hyper)
        return
    # Tensors sharing dtype, device and step take one multi-tensor launch on a GPU; on the CPU
    # the reference updates them one by one (torch's formulas, few temporaries, in place).
    groups: dict = {}
    for i, param in enumerate(params):
        where = -1 if type(param) is np.ndarray else param.device.id
        groups.setdefault((param.dtype.str, where, steps[i]), []).append(i)
    for (_, _, step), members in groups.items():
        kernels.adam_update_multi([params[i] for i in members], [grads[i] for i in members],
                                  [exp_avgs[i] for i in members],
                                  [exp_avg_sqs[i] for i in members], step=step, **hyper)
