"""Anomaly mode: ``detect_anomaly``, ``set_detect_anomaly`` (torch's ``torch.autograd``).

In anomaly mode every graph node records the traceback of the forward call that created it;
during backward, a node whose backward raises, or (``check_nan``) returns NaN in one of its
gradients, warns with that traceback (torch's "Error detected in MulBackward0. Traceback of
forward call that caused the error: ...") and the error propagates; NaN raises torch's
``RuntimeError("Function 'MulBackward0' returned nan values in its 0th output.")``.

State is per thread, like grad mode (the ``threads`` backend runs one rank per thread);
torch keeps one process-wide flag. A thread starts with anomaly mode off. Cost when off: node
creation reads one module global (``active``, the number of threads in anomaly mode) and each
backward reads the flag once.

Output numbering: ``i`` counts the positional arguments of the op's forward (ddp's ops may have
non-tensor arguments, whose gradient is always None), where torch counts tensor inputs; for ops
whose arguments are all tensors (``mul``, ``matmul``, ...) the two agree.
"""

from __future__ import annotations

import functools
import sys
import threading
import traceback
import warnings

from ddp import dtypes

_state = threading.local()
_lock = threading.Lock()
active = 0  # threads with anomaly mode on: node creation skips all work while it is 0


def is_anomaly_enabled() -> bool:
    """True when this thread records forward tracebacks and checks backward (torch's name)."""
    return getattr(_state, "enabled", False)


def is_anomaly_check_nan_enabled() -> bool:
    """True when anomaly mode also raises on NaN gradients (the default, as in torch)."""
    return getattr(_state, "check_nan", True)


def set_anomaly_enabled(enabled: bool, check_nan: bool = True) -> None:
    """Switch anomaly mode for this thread (torch's ``torch.set_anomaly_enabled``)."""
    global active
    enabled = bool(enabled)
    with _lock:
        active += int(enabled) - int(is_anomaly_enabled())
    _state.enabled = enabled
    _state.check_nan = bool(check_nan)


class detect_anomaly:  # noqa: N801
    """Context manager (and decorator) turning anomaly mode on inside, as torch's.

    Args:
        check_nan: raise when a backward node returns NaN (default True).

    Example::

        with ddp.autograd.detect_anomaly():
            loss = model(x).sum()
            loss.backward()   # RuntimeError naming the node, after the forward traceback
    """

    def __init__(self, check_nan: bool = True) -> None:
        self.prev = is_anomaly_enabled()
        self.check_nan = check_nan
        self.prev_check_nan = is_anomaly_check_nan_enabled()
        warnings.warn("Anomaly Detection has been enabled. This mode will increase the runtime "
                      "and should only be enabled for debugging.", stacklevel=2)

    def __enter__(self) -> None:
        self.prev = is_anomaly_enabled()
        self.prev_check_nan = is_anomaly_check_nan_enabled()
        set_anomaly_enabled(True, self.check_nan)

    def __exit__(self, *exc) -> bool:
        set_anomaly_enabled(self.prev, self.prev_check_nan)
        return False

    def __call__(self, fn):
        check_nan = self.check_nan

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # warned once, when decorating
                mode = detect_anomaly(check_nan)
            with mode:
                return fn(*args, **kwargs)

        return wrapper


class set_detect_anomaly:  # noqa: N801
    """``set_detect_anomaly(mode, check_nan=True)``: a plain call or a context manager (torch).

    As a plain call it switches this thread's anomaly mode; as a context manager it restores
    the previous mode on exit.
    """

    def __init__(self, mode: bool, check_nan: bool = True) -> None:
        self.prev = is_anomaly_enabled()
        self.prev_check_nan = is_anomaly_check_nan_enabled()
        set_anomaly_enabled(mode, check_nan)

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc) -> bool:
        set_anomaly_enabled(self.prev, self.prev_check_nan)
        return False


def forward_trace() -> traceback.StackSummary | None:
    """The caller's stack for a node being created, when this thread is in anomaly mode."""
    if not is_anomaly_enabled():
        return None
    frame = sys._getframe(2)  # above the node-creating call (Function.apply and its caller)
    stack = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
    stack.reverse()
    return stack


def call_backward(node, grad) -> tuple:
    """``node.backward(node, grad)`` under anomaly mode: on an error, or a NaN gradient when
    ``check_nan``, warn with the node's forward traceback and raise."""
    try:
        grads = node.run_backward(grad)
        if type(grads) is not tuple:
            grads = (grads,)
        if is_anomaly_check_nan_enabled():
            for i, g in enumerate(grads):
                if g is not None and getattr(g, "dtype", None) is not None \
                        and dtypes.is_inexact(g.dtype) and bool((g != g).any()):
                    raise RuntimeError(
                        f"Function '{node.name()}' returned nan values in its {i}th output.")
    except Exception:
        _warn_forward_trace(node)
        raise
    return grads


def _warn_forward_trace(node) -> None:
    stack = getattr(node, "forward_trace", None)
    if stack is None:
        text = ("No forward pass information available. Enable detect anomaly during forward "
                "pass for more information.")
    else:
        text = "Traceback of forward call that caused the error:\n" + "".join(stack.format())
    warnings.warn(f"Error detected in {node.name()}. {text}", stacklevel=4)
