"""A rank that leaves an MPI job: at exit it waits for the others, or tells them it has left.

A rank whose script ends (the end of the script, ``sys.exit(0)`` or ``sys.exit(1)``) while
the others still run would sit in ``MPI_Finalize`` while they wait for it in a collective
forever. So an ``atexit`` hook (registered at ``import ddp`` under an MPI launcher with several
ranks, and by ``init_process_group``) makes every rank enter a non-blocking barrier on the
job's peer channel (``ddp.distributed.peer_channel``) at exit:

* every rank arrives (a normal end): MPI finalizes as usual;
* the barrier has not completed after ``_NOTICE_S``: the rank tells every other rank that it
  has left (its reason and its last collective) and keeps waiting. A rank blocked in a
  collective of a group that contains it ends the job ``DDP_EXIT_GRACE`` seconds later, naming
  the rank that left (``ddp.distributed.watchdog``); a rank that is only busy (rank 0 writing a
  checkpoint) finishes and reaches the barrier, and the job ends normally.

A rank that ends before ``init_process_group`` takes part too: its hook initialises the process
group first (the others' ``MPI_Init`` and init collectives wait for it), then leaves the same
way. ``os._exit``, signals and native crashes skip ``atexit``: mpiexec ends the job itself
then, and only ``ddprun`` can say which rank it was (``ddp.distributed.run_dir``).

The exit code of ``sys.exit(n)`` is not visible to an ``atexit`` hook (Python 3.11), so the
message says "its script ended: the end of the script or sys.exit" without the number.
"""

from __future__ import annotations

import atexit
import multiprocessing
import sys
import time

from ddp import config
from ddp.distributed import api, run_dir
from ddp.distributed.failure import install_pre_init_hook
from ddp.distributed.peer_channel import LEFT, PeerChannel
from ddp.distributed.watchdog import Watchdog

_NOTICE_S = 0.5  # ranks that end together never send notices
_POLL_S = 0.01

_registered = False
_armed: tuple[int, PeerChannel | None, Watchdog] | None = None


def _launch_rank_and_size() -> tuple[int, int | None]:
    """This process's rank and the world size from the launcher's variables (size: None if
    the launcher sets none, as a bare PMIx launch)."""
    rank = next((config.get(v) for v in config.RANK_VARS if config.get(v) is not None), 0)
    size = next((config.get(v) for v in config.SIZE_VARS if config.get(v) is not None), None)
    return rank, size


def install_launch_hooks() -> None:
    """At ``import ddp``: under an MPI launcher with several ranks, the pre-init excepthook and
    the exit hook. Elsewhere (one process, ``ddprun --threads``) nothing is installed, nor in
    a ``multiprocessing`` child of a rank (a data-loader worker inherits the launcher's
    variables, but it is not a rank)."""
    if not api.launched_with_several_ranks() or multiprocessing.parent_process() is not None:
        return
    rank, size = _launch_rank_and_size()
    install_pre_init_hook(rank, size)
    _register()


def arm(rank: int, peers: PeerChannel | None, dog: Watchdog | None) -> None:
    """Called by the mpi backend's init: this rank leaves through ``peers`` at exit.

    ``dog`` is the process's watchdog (None in a world of one: then nothing is armed).
    """
    global _armed
    if dog is None:
        return  # a world of one: nobody to wait for
    if _armed is None:
        _armed = (rank, peers, dog)
    _register()


def _register() -> None:
    global _registered
    if not _registered:
        _registered = True
        atexit.register(_at_exit)


def _mpi_started_by_someone_else() -> bool:
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and (mpi.Is_initialized() or mpi.Is_finalized())


def _at_exit() -> None:
    if _armed is None:
        if _mpi_started_by_someone_else() or api.is_initialized():
            return  # the program drives MPI itself, or chose a group without MPI ("local")
        reason = "its script ended before init_process_group: the end of the script or sys.exit"
        api.init_process_group("mpi")  # meets the other ranks' MPI_Init and init collectives
    else:
        reason = "its script ended: the end of the script or sys.exit"
    leave(reason)


def leave(reason: str) -> None:
    """Wait at the exit barrier until every rank is there, telling the others if it lasts.

    Blocks until every rank has entered the barrier or the job is aborted (by a rank blocked
    in a collective with this one, ``ddp.distributed.watchdog``).
    """
    from mpi4py import MPI

    rank, peers, dog = _armed
    if MPI.Is_finalized():
        return
    if peers is None:  # below THREAD_MULTIPLE: no watchdog thread can hear a notice
        run_dir.record_end(rank, "done")
        return
    last = dog.last()
    dog.leaving(reason)
    request = peers.exit_barrier()
    told = False
    start = time.monotonic()
    while not request.Test():
        if not told and time.monotonic() - start > _NOTICE_S:
            peers.send_all(LEFT, {"reason": reason, "last": last})
            told = True
        time.sleep(_POLL_S)
    dog.stop()  # before MPI_Finalize: the thread may be reading the channel
    peers.close()
    run_dir.record_end(rank, "done")
