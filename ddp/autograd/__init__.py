"""Autograd: graph nodes, the backward engine and grad mode."""

from ddp.autograd.function import Function
from ddp.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled


def backward(tensors, grad_tensors=None, retain_graph=None):
    """Backpropagate from ``tensors`` (see ``Tensor.backward``)."""
    from ddp.tensor import backward as _backward

    _backward(tensors, grad_tensors, retain_graph)


__all__ = ["Function", "backward", "enable_grad", "is_grad_enabled", "no_grad",
           "set_grad_enabled"]
