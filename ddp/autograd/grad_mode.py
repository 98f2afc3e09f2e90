"""Grad mode: ``no_grad``, ``enable_grad``, ``set_grad_enabled`` (per thread, as in torch).

Per-thread state matters here: the ``threads`` distributed backend runs one rank per thread.
Every thread starts with grad mode on, whatever the mode of the thread that started it.
"""

from __future__ import annotations

import functools
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    """True when operations record a graph for backward in this thread."""
    return getattr(_state, "enabled", True)


def _set(enabled: bool) -> None:
    _state.enabled = enabled


class _GradModeContext:
    """Base of the grad-mode context managers; instances also work as decorators."""

    _target: bool

    def __enter__(self):
        self._previous = is_grad_enabled()
        _set(self._target)
        return self

    def __exit__(self, *exc):
        _set(self._previous)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper


class _NoArgDecorator(_GradModeContext):
    """Also usable as a bare decorator: ``@no_grad`` as well as ``@no_grad()`` (as in torch)."""

    def __new__(cls, orig_func=None):
        if orig_func is None:
            return super().__new__(cls)
        return cls()(orig_func)


class no_grad(_NoArgDecorator):  # noqa: N801
    """Context manager/decorator: no graph is recorded inside."""

    _target = False


class enable_grad(_NoArgDecorator):  # noqa: N801
    """Context manager/decorator: graphs are recorded inside, even within ``no_grad``."""

    _target = True


class set_grad_enabled(_GradModeContext):  # noqa: N801
    """``set_grad_enabled(False)`` as a context manager or a plain call, as in torch."""

    def __init__(self, mode: bool):
        self._target = bool(mode)
        self._previous = is_grad_enabled()
        _set(self._target)

    def __enter__(self):
        return self

    def __call__(self, fn):
        mode = self._target
        _set(self._previous)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)

        return wrapper


class inference_mode(_GradModeContext):  # noqa: N801
    """Alias of ``no_grad`` (ddp has no separate inference tensors); ``@inference_mode`` works."""

    def __new__(cls, mode=True):
        if callable(mode):
            return cls()(mode)
        return super().__new__(cls)

    def __init__(self, mode: bool = True):
        self._target = not mode

    def __call__(self, fn):
        target = self._target

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with inference_mode(not target):
                return fn(*args, **kwargs)

        return wrapper
