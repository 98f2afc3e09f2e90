"""Pure update rules over lists of arrays: the maths of SGD and Adam/AdamW, torch's exactly.

Each function updates parameter (and state) arrays in place with in-place ufuncs (``out=``),
so a step allocates at most one scratch array per parameter. Hyperparameters are Python floats:
a NumPy ``float64`` scalar would silently upcast ``float32`` arrays. Every array is NumPy or
CuPy, the array module comes from ``get_array_module``.

The formulas mirror ``torch.optim.sgd._single_tensor_sgd`` and
``torch.optim.adam._single_tensor_adam``, the paths torch takes for CPU tensors.
"""

from __future__ import annotations

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


def adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, max_exp_avg_sqs: list,
         state_steps: list, *, amsgrad: bool, beta1: float, beta2: float, lr: float,
         weight_decay: float, eps: float, maximize: bool, decoupled_weight_decay: bool) -> None:
    """One Adam (or AdamW, with ``decoupled_weight_decay``) step over lists of arrays.

    ``state_steps`` are 0-d float32 arrays (torch keeps ``step`` as a float32 tensor),
    incremented in place. ``max_exp_avg_sqs`` is used only when ``amsgrad``.
    """
    lr, weight_decay, eps = float(lr), float(weight_decay), float(eps)
    beta1, beta2 = float(beta1), float(beta2)
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        step_t += 1
        step = float(step_t)
        # One implementation for both devices: a fused kernel on CuPy, the NumPy reference
        # (torch's formulas, few temporaries, in place) otherwise.
        kernels.adam_update(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1,
                            beta2=beta2, eps=eps, weight_decay=weight_decay,
                            decoupled=decoupled_weight_decay, maximize=maximize,
                            max_exp_avg_sq=max_exp_avg_sqs[i] if amsgrad else None)
