"""Collective failure: an error on any rank of a checkpoint phase raises on every rank.

A checkpoint operation is a sequence of *phases* of local work (file I/O, validation) separated
by collectives. A rank that raised inside a phase would skip the next collective and leave the
others waiting in it, so every phase ends with one small agreement: an ``allgather_object`` of
``(type name, message, errno)`` or None. When any rank failed, every rank raises the *same*
exception type with the first failing rank's message (``"rank 0: no checkpoint in ..."``), so
``try: load(...) except FileNotFoundError: start fresh`` takes the same branch everywhere.

Only strings cross ranks, never a pickled exception object. The type is the first class of the
exception's MRO in an allow-list of builtin exceptions (a ``json.JSONDecodeError`` travels as
ValueError); anything else becomes RuntimeError naming the original type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_ALLOWED = {cls.__name__: cls for cls in (
    FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
    InterruptedError, TimeoutError, OSError, ValueError, TypeError, KeyError, IndexError,
    MemoryError, NotImplementedError, RuntimeError,
)}


def _summary(exc: Exception) -> tuple[str, str, int | None]:
    """What travels to the other ranks: an allowed type name, the message, an errno."""
    kind = next((c.__name__ for c in type(exc).__mro__ if _ALLOWED.get(c.__name__) is c),
                "RuntimeError")
    message = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    if isinstance(exc, OSError) and exc.strerror is not None:
        message = exc.strerror + (f": {exc.filename!r}" if exc.filename is not None else "")
    if type(exc).__name__ != kind:
        message = f"{type(exc).__name__}: {message}"
    errno = exc.errno if isinstance(exc, OSError) else None
    return kind, message, errno


def _settle(pg, what: str, error: Exception | None, value: Any) -> list:
    """Collective: every rank's ``value``, or the first failing rank's error on every rank."""
    summary = None if error is None else _summary(error)
    gathered = pg.allgather_object((summary, value if error is None else None))
    failed = [(r, s) for r, (s, _) in enumerate(gathered) if s is not None]
    if not failed:
        return [v for _, v in gathered]
    first, (kind, message, errno) = failed[0]
    text = f"{what}: rank {first}: {message}"
    if len(failed) > 1:
        text += f" (also failed on rank(s) {[r for r, _ in failed[1:]]})"
    cls = _ALLOWED[kind]
    exc = cls(errno, text) if errno is not None and issubclass(cls, OSError) else cls(text)
    raise exc from error


def run(pg, what: str, fn: Callable[[], T]) -> T:
    """Collective: run ``fn`` on this rank; raise on every rank if it raised on any.

    ``fn`` must issue no collective (a failing rank would skip it). Must be called on all
    ranks of ``pg``, in the same order.

    Args:
        pg: the process group of the operation.
        what: the operation, prefixed to the message (``"checkpoint.load"``).
        fn: this rank's local work.

    Returns:
        This rank's result of ``fn``.

    Raises:
        The first failing rank's exception type (see the module docstring), on every rank.
    """
    try:
        value = fn()
    except Exception as exc:  # every rank must reach the agreement
        _settle(pg, what, exc, None)
        raise AssertionError("unreachable: _settle raises for a failed rank") from exc
    _settle(pg, what, None, None)
    return value


def gather(pg, what: str, fn: Callable[[], T]) -> list[T]:
    """Like :func:`run`, but returns every rank's (small, picklable) result in rank order."""
    try:
        value = fn()
    except Exception as exc:  # every rank must reach the agreement
        _settle(pg, what, exc, None)
        raise AssertionError("unreachable: _settle raises for a failed rank") from exc
    return _settle(pg, what, None, value)
