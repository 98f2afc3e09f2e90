"""Autograd: graph nodes, the backward engine and grad mode.

``ddp.autograd.Function`` is torch's public class for custom functions (tensors in and out);
``ddp.autograd.function.Function`` is the engine's array-level op base that ddp's own ops use.
"""

from ddp.autograd import anomaly_mode, function
from ddp.autograd.anomaly_mode import detect_anomaly, set_detect_anomaly
from ddp.autograd.custom_function import Function
from ddp.autograd.engine import backward, grad
from ddp.autograd.function import FunctionCtx
from ddp.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from ddp.autograd.variable import Variable

__all__ = ["Function", "FunctionCtx", "anomaly_mode", "backward", "detect_anomaly",
           "enable_grad", "function", "grad", "is_grad_enabled", "no_grad",
           "set_detect_anomaly", "set_grad_enabled", "Variable"]
