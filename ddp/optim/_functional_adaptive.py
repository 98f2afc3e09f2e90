"""Pure update rules of the per-coordinate adaptive optimizers: RMSprop, Adagrad, Adadelta.

Each function updates parameter and state arrays in place over parallel lists, in the order of
operations of torch's ``_single_tensor_rmsprop``, ``_single_tensor_adagrad`` and
``_single_tensor_adadelta`` (the paths torch takes for CPU tensors), so float64 trajectories
agree to rounding. Arrays are NumPy or CuPy (``xp``); hyperparameters are Python floats (a NumPy
``float64`` scalar would silently upcast ``float32`` arrays). ``state_steps`` are 0-d float32
host arrays (torch keeps ``step`` as a float32 tensor), incremented in place.
"""

from __future__ import annotations

from ddp.backend import get_array_module


def _gradient(param, grad, weight_decay: float, maximize: bool):
    """``-grad`` when maximizing, plus the L2 term ``weight_decay * param``; never in place."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad + weight_decay * param
    return grad


def rmsprop(params: list, grads: list, square_avgs: list, grad_avgs: list,
            momentum_buffers: list, state_steps: list, *, lr: float, alpha: float, eps: float,
            weight_decay: float, momentum: float, centered: bool, maximize: bool) -> None:
    """One RMSprop step: ``v = alpha v + (1 - alpha) g^2``, ``p -= lr g / (sqrt(v) + eps)``.

    ``centered`` subtracts the square of the running mean gradient ``grad_avgs[i]`` from ``v``;
    ``momentum > 0`` accumulates ``g / (sqrt(v) + eps)`` in ``momentum_buffers[i]``. The lists
    ``grad_avgs`` and ``momentum_buffers`` are empty when their option is off.
    """
    lr, alpha, eps = float(lr), float(alpha), float(eps)
    weight_decay, momentum = float(weight_decay), float(momentum)
    for i, param in enumerate(params):
        xp = get_array_module(param)
        state_steps[i] += 1
        grad = _gradient(param, grads[i], weight_decay, maximize)
        square_avg = square_avgs[i]
        square_avg *= alpha
        square_avg += (1 - alpha) * grad * grad
        if centered:
            grad_avg = grad_avgs[i]
            grad_avg += (1 - alpha) * (grad - grad_avg)  # lerp(grad_avg, grad, 1 - alpha)
            avg = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = xp.sqrt(square_avg)
        avg += eps
        if momentum > 0:
            buf = momentum_buffers[i]
            buf *= momentum
            buf += grad / avg
            param -= lr * buf
        else:
            param -= lr * (grad / avg)


def adagrad(params: list, grads: list, state_sums: list, state_steps: list, *, lr: float,
            weight_decay: float, lr_decay: float, eps: float, maximize: bool) -> None:
    """One Adagrad step: ``s += g^2``, ``p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)``.
    """
    lr, weight_decay, lr_decay, eps = float(lr), float(weight_decay), float(lr_decay), float(eps)
    for i, param in enumerate(params):
        xp = get_array_module(param)
        state_steps[i] += 1
        step = float(state_steps[i])
        grad = _gradient(param, grads[i], weight_decay, maximize)
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum = state_sums[i]
        state_sum += grad * grad
        std = xp.sqrt(state_sum)
        std += eps
        param -= clr * (grad / std)


def adadelta(params: list, grads: list, square_avgs: list, acc_deltas: list, state_steps: list,
             *, lr: float, rho: float, eps: float, weight_decay: float, maximize: bool) -> None:
    """One Adadelta step: ``v = rho v + (1 - rho) g^2``,
    ``d = sqrt(u + eps) / sqrt(v + eps) * g``, ``u = rho u + (1 - rho) d^2``, ``p -= lr d``."""
    lr, rho, eps, weight_decay = float(lr), float(rho), float(eps), float(weight_decay)
    for i, param in enumerate(params):
        xp = get_array_module(param)
        state_steps[i] += 1
        grad = _gradient(param, grads[i], weight_decay, maximize)
        square_avg, acc_delta = square_avgs[i], acc_deltas[i]
        square_avg *= rho
        square_avg += (1 - rho) * grad * grad
        std = xp.sqrt(square_avg + eps)
        delta = xp.sqrt(acc_delta + eps)
        delta /= std
        delta *= grad
        acc_delta *= rho
        acc_delta += (1 - rho) * delta * delta
        param -= lr * delta
