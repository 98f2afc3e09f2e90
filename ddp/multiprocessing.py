"""``ddp.multiprocessing``: Python's ``multiprocessing`` plus torch's ``spawn``.

Everything of the standard module is re-exported (``Process``, ``Queue``, ``get_context``,
``set_start_method`` ...), as ``torch.multiprocessing`` does. ddp tensors hold NumPy arrays and
pickle like them; there is no shared-memory tensor sharing, so the sharing strategy is only
recorded.

:func:`spawn` differs from torch's on purpose: the ``nprocs`` ranks are threads of this process
(ddp's ``threads`` backend, :func:`ddp.distributed.spawn`), not processes, because ddp's
multi-process ranks are MPI processes, which only an MPI launcher can start. Each rank has its
own default process group (``init_process_group(...)`` inside ``fn`` is accepted and does
nothing), random generator, grad mode and default device. For one process per rank, launch the
script with ``mpiexec -n N`` (or ``ddprun -n N``) and read the rank from ``RANK``.
"""
# ruff: noqa: F401, F403 - this module re-exports the standard multiprocessing module

from __future__ import annotations

import threading
from collections.abc import Callable
from multiprocessing import *
from typing import Any

from ddp.distributed import SpawnError, get_rank
from ddp.distributed import spawn as _spawn_ranks

_SHARING_STRATEGIES = frozenset({"file_descriptor", "file_system"})
_sharing_strategy = "file_descriptor"


def get_all_sharing_strategies() -> set[str]:
    """The strategies torch knows; ddp records the choice only (see the module docstring)."""
    return set(_SHARING_STRATEGIES)


def get_sharing_strategy() -> str:
    return _sharing_strategy


def set_sharing_strategy(new_strategy: str) -> None:
    """Record ``new_strategy`` (``"file_descriptor"`` or ``"file_system"``).

    Raises:
        ValueError: the name is not one of them.
    """
    global _sharing_strategy
    if new_strategy not in _SHARING_STRATEGIES:
        raise ValueError(f"set_sharing_strategy: unknown strategy {new_strategy!r}; expected one "
                         f"of {sorted(_SHARING_STRATEGIES)}")
    _sharing_strategy = new_strategy


class ProcessContext:
    """What ``spawn(..., join=False)`` returns: ``join()`` waits for the ranks (threads)."""

    def __init__(self, nprocs: int, run: Callable[[], None]):
        self.nprocs = nprocs
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(run,), name="ddp-spawn",
                                        daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as exc:  # handed to the joining thread
            self._error = exc

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True once every rank has returned.

        Raises:
            SpawnError: a rank raised (the message names the rank, with its traceback).
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return True


def spawn(fn: Callable[..., Any], args: tuple = (), nprocs: int = 1, join: bool = True,
          daemon: bool = False, start_method: str = "spawn") -> ProcessContext | None:
    """Run ``fn(i, *args)`` for ``i`` in ``range(nprocs)``, each as a simulated rank (a thread).

    Torch's signature and contract (``fn`` gets its index first; an exception in any rank is
    raised here, naming the rank), with threads instead of processes: see the module docstring.
    ``daemon`` and ``start_method`` are accepted for compatibility and change nothing.

    Returns:
        None once every rank has returned when ``join`` is True (as torch), else a
        :class:`ProcessContext` to ``join()``.

    Raises:
        SpawnError: a rank raised; ``.rank`` names it and ``__cause__`` is its exception.
        ValueError: ``nprocs`` is not a positive int.
    """
    if not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"spawn: nprocs must be a positive int, got {nprocs!r}")

    def rank_main() -> None:
        fn(get_rank(), *args)

    def run() -> None:
        _spawn_ranks(rank_main, nprocs)

    if not join:
        return ProcessContext(nprocs, run)
    run()
    return None

