"""``ddp.futures``: torch's ``Future``, the result of an asynchronous collective or comm hook.

A ``Future`` holds a value that may not exist yet. ``wait()`` returns it (completing the work
behind it first), ``then(callback)`` chains a computation on it (torch's idiom in DDP
communication hooks: ``all_reduce(..., async_op=True).get_future().then(decompress)``).

Collectives in ddp complete when waited for, on the thread that waits, so a chained callback
runs when the chain is waited for (or at once, when its source is already complete), never on
a background thread. Not thread-safe: a future is used by one thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_PENDING = object()


class Future:
    """A value that may not exist yet (torch.futures.Future's API).

    Args:
        devices: accepted for torch compatibility (ddp futures need no stream bookkeeping).
    """

    def __init__(self, *, devices=None, _complete: Callable[[], Any] | None = None):
        self._value: Any = _PENDING
        self._error: BaseException | None = None
        self._complete = _complete  # runs the pending work and returns the value
        self._callbacks: list[Callable[[Future], None]] = []

    def done(self) -> bool:
        """True once the value (or an error) is set."""
        return self._value is not _PENDING or self._error is not None

    def set_result(self, result: Any) -> None:
        """Complete the future with ``result``.

        Raises:
            RuntimeError: it is already complete.
        """
        if self.done():
            raise RuntimeError("Future can only be marked completed once.")
        self._value = result
        self._run_callbacks()

    def set_exception(self, result: BaseException) -> None:
        """Complete the future with an error that ``wait()`` and ``value()`` raise."""
        if self.done():
            raise RuntimeError("Future can only be marked completed once.")
        if not isinstance(result, BaseException):
            raise TypeError(f"set_exception expects an exception, got {type(result).__name__}")
        self._error = result
        self._run_callbacks()

    def wait(self) -> Any:
        """Block until complete (running the work behind it) and return the value."""
        if not self.done() and self._complete is not None:
            complete, self._complete = self._complete, None
            try:
                value = complete()
            except BaseException as exc:
                self.set_exception(exc)
            else:
                self.set_result(value)
        if not self.done():
            raise RuntimeError("Future.wait(): nothing will ever complete this future (no work "
                               "behind it and set_result was not called)")
        return self.value()

    def value(self) -> Any:
        """The value of a complete future (raises its error, if it failed)."""
        if self._error is not None:
            raise self._error
        if self._value is _PENDING:
            raise RuntimeError("Future.value() called before the future completed; use wait()")
        return self._value

    def then(self, callback: Callable[[Future], Any]) -> Future:
        """A future of ``callback(self)``, computed once this one is complete."""
        def complete() -> Any:
            self.wait()
            return callback(self)

        chained = Future(_complete=complete)
        if self.done():
            chained.wait()
        return chained

    def add_done_callback(self, callback: Callable[[Future], None]) -> None:
        """Call ``callback(self)`` when complete (at once if it already is)."""
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


def collect_all(futures: list[Future]) -> Future:
    """A future of the list of ``futures``, complete once all of them are."""
    def complete() -> list[Future]:
        for future in futures:
            future.wait()
        return list(futures)

    return Future(_complete=complete)


def wait_all(futures: list[Future]) -> list:
    """Wait for every future; their values, in order."""
    return [f.wait() for f in futures]
