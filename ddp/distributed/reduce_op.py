"""``ReduceOp`` (the reductions of collectives) and ``Work`` (a handle on an async collective)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ddp.futures import Future


class ReduceOp(enum.Enum):
    """Reductions of ``all_reduce`` and ``reduce_scatter``, with torch's names.

    ``AVG`` is ``SUM`` followed by a division by the group size, so it is only defined for
    floating-point arrays.
    """

    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"

    def __repr__(self) -> str:
        return f"ReduceOp.{self.name}"


def as_reduce_op(op) -> ReduceOp:
    """Accept a ``ReduceOp`` or its name (``"sum"``, ``"SUM"``); ValueError otherwise."""
    if isinstance(op, ReduceOp):
        return op
    if isinstance(op, str):
        for member in ReduceOp:
            if op.lower() in (member.value, member.name.lower()):
                return member
    raise ValueError(f"Unknown reduce op {op!r}; expected one of {[m.name for m in ReduceOp]}")


class Work:
    """Handle on a collective started with ``async_op=True``.

    ``wait()`` blocks until the collective is complete and its result is in the caller's array;
    it may be called more than once. Backends that run collectives synchronously return a Work
    that is already complete.
    """

    def __init__(self, finish: Callable[[], None] | None = None, result: Any = None):
        self._finish = finish
        self._done = finish is None
        self._result = result  # what get_future() yields: torch's list of output tensors

    def wait(self, timeout=None) -> bool:
        """Complete the collective (``timeout`` is accepted for torch compatibility, unused)."""
        if not self._done:
            finish, self._finish = self._finish, None
            self._done = True
            finish()
        return True

    def is_completed(self) -> bool:
        return self._done

    def result(self) -> Any:
        """The collective's output tensors (a list), once complete."""
        self.wait()
        return self._result

    def get_future(self) -> Future:
        """A ``Future`` of ``result()``: waiting for it completes this collective."""
        return Future(_complete=self.result)
