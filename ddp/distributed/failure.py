"""Fail fast: an unhandled exception on one MPI rank ends the whole job.

Without this, the other ranks of ``mpiexec -n N python train.py`` wait forever in their next
collective for the rank that died. The hooks print the traceback prefixed with the rank, then
call ``MPI.COMM_WORLD.Abort(1)``, which makes the launcher kill every rank and exit non-zero.

Before ``init_process_group`` the same holds: the other ranks wait in ``MPI_Init`` for every
rank to start MPI, so the hook installed at ``import ddp`` under an MPI launcher
(:func:`install_pre_init_hook`) prints the traceback, then starts MPI itself (which returns
once every rank has reached ``MPI_Init``) and aborts.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

from ddp.distributed import run_dir

_installed = False
_pre_init_installed = False
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
        _abort_all(rank)


def _abort_all(rank: int) -> None:
    """Flush, let the launcher forward the output, then end every rank (never returns)."""
    try:
        run_dir.record_end(rank, "abort")  # ddprun: this rank has said why the job ends
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
        _abort_all(rank)


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


def install_pre_init_hook(rank: int, size: int | None) -> None:
    """Install a ``sys.excepthook`` for the time before ``init_process_group``.

    For a process that an MPI launcher started as rank ``rank`` of ``size`` (read from the
    launcher's variables): an unhandled exception prints its traceback prefixed with the rank,
    then starts MPI, whose ``MPI_Init`` returns once every rank has reached its own (at the
    latest in their ``init_process_group``), and aborts the job. Without it the other ranks
    would wait in ``MPI_Init`` forever. ``install_abort_hooks`` replaces it at init.
    ``size`` may be None (a launcher that sets no size variable).
    """
    global _pre_init_installed
    if _pre_init_installed or (size is not None and size <= 1):
        return
    of = "" if size is None else f"/{size}"
    _pre_init_installed = True

    def excepthook(exc_type, exc, tb) -> None:
        try:
            lines = traceback.format_exception(exc_type, exc, tb)
            text = "".join(
                f"[rank {rank}] {line}" for chunk in lines for line in chunk.splitlines(True)
            )
            sys.stderr.write(
                f"[rank {rank}] Unhandled {exc_type.__name__} before init_process_group on "
                f"rank {rank}{of}; aborting all ranks once they have started MPI "
                f"(MPI_Abort)\n{text}")
            sys.stderr.flush()
        finally:
            from mpi4py import MPI  # noqa: F401 - MPI_Init: meets the other ranks' MPI_Init

            _abort_all(rank)

    sys.excepthook = excepthook
