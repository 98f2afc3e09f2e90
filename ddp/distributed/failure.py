"""Fail fast: an unhandled exception on one MPI rank ends the whole job.

Without this, the other ranks of ``mpiexec -n N python train.py`` wait forever in their next
collective for the rank that died. The hooks print the traceback prefixed with the rank, then
call ``MPI.COMM_WORLD.Abort(1)``, which makes the launcher kill every rank and exit non-zero.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

_installed = False
_FORWARD_GRACE_S = 0.5


def _report_and_abort(rank: int, size: int, exc_type, exc, tb, where: str) -> None:
    try:
        lines = traceback.format_exception(exc_type, exc, tb)
        text = "".join(
            f"[rank {rank}] {line}" for chunk in lines for line in chunk.splitlines(True)
        )
        sys.stderr.write(
            f"[rank {rank}] Unhandled {exc_type.__name__} in {where} of rank {rank}/{size}; "
            f"aborting all ranks (MPI_Abort)\n{text}"
        )
    finally:
        _abort_all()


def _abort_all() -> None:
    """Flush, let the launcher forward the output, then end every rank (never returns)."""
    try:
        sys.stderr.flush()
        sys.stdout.flush()
        # MPI_Abort makes the launcher kill every rank at once; give its I/O proxy a moment to
        # forward what was just printed first, or the job can die silently.
        time.sleep(_FORWARD_GRACE_S)
    finally:
        from mpi4py import MPI

        try:
            MPI.COMM_WORLD.Abort(1)
        finally:
            # MPI_Abort called from a non-main thread can return (or raise) before the launcher
            # kills this process, and the main thread would run on past the failure: end the
            # whole process now, with every thread.
            os._exit(1)


def abort_job(rank: int, size: int, message: str) -> None:
    """Print ``message`` as rank ``rank``'s reason and abort every rank (never returns)."""
    try:
        sys.stderr.write(f"[rank {rank}] {message}\n[rank {rank}] aborting all {size} ranks "
                         f"(MPI_Abort)\n")
    finally:
        _abort_all()


def install_abort_hooks(rank: int, size: int) -> None:
    """Install ``sys.excepthook`` and ``threading.excepthook`` that abort the MPI job.

    Only for worlds of more than one rank; ``KeyboardInterrupt`` also aborts (the launcher
    normally forwards Ctrl-C to every rank anyway). Installing twice is a no-op.
    """
    global _installed
    if _installed or size <= 1:
        return
    _installed = True
    previous_thread_hook = threading.excepthook

    def excepthook(exc_type, exc, tb) -> None:
        _report_and_abort(rank, size, exc_type, exc, tb, "the main thread")

    def thread_excepthook(args) -> None:
        if args.exc_type is SystemExit:
            previous_thread_hook(args)
            return
        name = args.thread.name if args.thread is not None else "a thread"
        _report_and_abort(rank, size, args.exc_type, args.exc_value, args.exc_traceback,
                          f"thread {name!r}")

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
