"""Autograd: graph nodes, the backward engine and grad mode."""

from ddp.autograd.engine import backward
from ddp.autograd.function import Function
from ddp.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled

__all__ = ["Function", "backward", "enable_grad", "is_grad_enabled", "no_grad",
           "set_grad_enabled"]
