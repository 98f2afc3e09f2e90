"""``spawn``: run a function as N simulated ranks (threads backend) in this process."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from ddp.distributed import api
from ddp.distributed.threads_backend import PeerAbortedError, make_world


class SpawnError(RuntimeError):
    """A rank of :func:`spawn` raised; ``.rank`` says which, ``__cause__`` is its exception."""

    def __init__(self, rank: int, world_size: int, exc: BaseException):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        super().__init__(
            f"rank {rank} of {world_size} raised {type(exc).__name__}: {exc}\n"
            f"-- traceback of rank {rank}:\n{tb}"
        )
        self.rank = rank
        self.exception = exc


def spawn(fn: Callable[..., Any], world_size: int, args: tuple = (),
          kwargs: dict | None = None) -> list:
    """Run ``fn(*args, **kwargs)`` as ``world_size`` simulated ranks, one thread each.

    Each thread has the threads backend's WORLD group as its default group (so ``get_rank()``
    answers per rank and ``init_process_group()`` inside ``fn`` is a no-op), its own default
    random generator and its own grad mode. When a rank raises, ranks blocked in (or later
    entering) a collective get an error instead of hanging, and the first failing rank's
    exception is re-raised here as ``SpawnError`` naming the rank. ``SystemExit`` with code 0
    or None counts as a normal return.

    Returns:
        The return value of ``fn`` on each rank, in rank order.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"spawn: world_size must be a positive int, got {world_size!r}")
    universe, groups = make_world(world_size)
    results: list[Any] = [None] * world_size
    errors: dict[int, BaseException] = {}

    def run(rank: int) -> None:
        api._set_thread_group(groups[rank], init_pending=True)
        try:
            results[rank] = fn(*args, **(kwargs or {}))
        except SystemExit as exc:
            if exc.code not in (None, 0):
                errors[rank] = exc
                universe.abort(f"rank {rank} exited with status {exc.code}")
            else:
                universe.rank_exited(rank)
        except BaseException as exc:
            errors[rank] = exc
            universe.abort(f"rank {rank} raised {type(exc).__name__}: {exc}")
        else:
            universe.rank_exited(rank)
        finally:
            api._set_thread_group(None)

    threads = [
        threading.Thread(target=run, args=(r,), name=f"ddp-rank-{r}", daemon=True)
        for r in range(world_size)
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # a timed join keeps Ctrl-C working
    except KeyboardInterrupt:
        universe.abort("the launcher was interrupted")
        raise
    if errors:
        primary = [r for r, e in errors.items() if not isinstance(e, PeerAbortedError)]
        rank = min(primary) if primary else min(errors)
        raise SpawnError(rank, world_size, errors[rank]) from errors[rank]
    return results
