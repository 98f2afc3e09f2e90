"""Pure update rules over lists of arrays: the maths of SGD and Adam/AdamW, torch's exactly.

Each function updates parameter (and state) arrays in place with in-place ufuncs (``out=``),
so a step allocates at most one scratch array per parameter. Hyperparameters are Python floats:
a NumPy ``float64`` scalar would silently upcast ``float32`` arrays. Every array is NumPy or
CuPy, the array module comes from ``get_array_module``.

The formulas mirror ``torch.optim.sgd._single_tensor_sgd`` and
``torch.optim.adam._single_tensor_adam``, the paths torch takes for CPU tensors.
"""

from __future__ import annotations

import numpy as np

from ddp import kernels
from ddp.backend import get_array_module


def sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, weight_decay: float,
        momentum: float, dampening: float, nesterov: bool, maximize: bool) -> None:
    """One SGD step over parallel lists of parameter and gradient arrays.

    ``momentum_buffers[i]`` is None before the first step with momentum; it is replaced by the
    new buffer (a copy of the first gradient), and updated in place afterwards.
    """
    lr, weight_decay, momentum = float(lr), float(weight_decay), float(momentum)
    dampening = float(dampening)
    if _sgd_fused(params, grads, momentum_buffers, lr=lr, weight_decay=weight_decay,
                  momentum=momentum, dampening=dampening, nesterov=nesterov, maximize=maximize):
        return
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        xp = get_array_module(param)
        owned = False  # whether ``grad`` is a scratch array this step may overwrite
        if maximize:
            grad = xp.negative(grad)
            owned = True
        if weight_decay != 0:
            decayed = xp.multiply(param, weight_decay)
            decayed += grad
            grad, owned = decayed, True
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = grad if owned else grad.copy()
                owned = False
                momentum_buffers[i] = buf
            else:
                buf *= momentum
                if dampening == 0:
                    buf += grad
                else:
                    scaled = xp.multiply(grad, 1.0 - dampening)
                    buf += scaled
            if nesterov:
                ahead = xp.multiply(buf, momentum)
                if owned:
                    grad += ahead
                else:
                    ahead += grad
                    grad, owned = ahead, True
            else:
                grad, owned = buf, False
        if owned:
            grad *= lr
            param -= grad
        else:
            param -= xp.multiply(grad, lr)


def _sgd_fused(params, grads, momentum_buffers, **hyper) -> bool:
    """One fused launch when every tensor is on one GPU with one dtype; False (nothing done)
    otherwise, and the caller takes the per-tensor path."""
    if not params or type(params[0]) is np.ndarray:
        return False
    first = params[0]
    if any(type(p) is np.ndarray or p.dtype != first.dtype or p.device != first.device
           for p in params):
        return False
    return kernels.sgd_update_multi(params, grads, momentum_buffers, **hyper)


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
