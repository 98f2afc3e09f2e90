"""The default process group: ``init_process_group``, ``get_rank`` and friends (torch's names).

The default group lives in a process-wide slot for the ``local`` and ``mpi`` backends, and in a
thread-local slot for the ``threads`` backend, where every simulated rank is a thread (so
``get_rank()`` answers per rank). A thread started *by* a simulated rank does not inherit its
rank: pass that thread the ProcessGroup object (``get_default_group()``) instead.
"""

from __future__ import annotations

import threading

from ddp import config
from ddp.backend import cupy_module
from ddp.cuda import warn_cpu_fallback
from ddp.distributed.local_backend import LocalProcessGroup
from ddp.distributed.process_group import ProcessGroup
from ddp.distributed.watchdog import timeout_seconds

BACKENDS = ("local", "threads", "mpi", "nccl")

_process_group: ProcessGroup | None = None
_local = threading.local()  # .group (threads backend), .init_pending (spawn did init for fn)



class _World:
    """``group.WORLD``: stands for the default group of the calling rank."""

    def __repr__(self) -> str:
        return "group.WORLD"


class group:  # noqa: N801 - torch.distributed.group
    WORLD = _World()


class GroupMember:
    WORLD = group.WORLD
    NON_GROUP_MEMBER = None


def launched_with_several_ranks() -> bool:
    """True when an MPI launcher (mpiexec, mpirun, srun) started this process among others."""
    # Launchers that set these run one process per rank; a size above 1 selects mpi.
    if any((config.get(var) or 0) > 1 for var in config.SIZE_VARS):
        return True
    return config.is_set("PMIX_RANK") and not config.any_set(config.SIZE_VARS)


def _current() -> ProcessGroup | None:
    g = getattr(_local, "group", None)
    return g if g is not None else _process_group


def is_available() -> bool:
    return True


def is_mpi_available() -> bool:
    """True when mpi4py can be imported (does not initialise MPI)."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


def is_initialized() -> bool:
    """True when this rank has a default process group."""
    return _current() is not None


def init_process_group(backend: str | None = None, init_method=None, world_size: int = -1,
                       rank: int = -1, timeout=None, **kwargs) -> None:
    """Create the default process group; call once per rank before any collective.

    Args:
        backend: "mpi", "local" or None (auto: "mpi" when launched by mpiexec/mpirun/srun with
            more than one rank, otherwise "local", a world of one that never imports mpi4py).
            "nccl": GPU collectives through CuPy's NCCL bindings over an MPI bootstrap (one
            rank per GPU); without a usable GPU it falls back to auto, with one warning, so
            torch scripts that ask for it still run on CPU. "gloo" is an alias of auto.
            "threads" is only available inside :func:`ddp.distributed.spawn` (or
            ``ddprun --threads``), which initialises each rank itself; calling this there once
            is allowed and does nothing.
        init_method, world_size, rank: accepted for torch compatibility; with MPI the launcher
            decides, so a ``world_size``/``rank`` that disagrees with it is an error.
        timeout: a ``timedelta`` (or seconds): a collective that waits longer ends the whole job
            with a message naming the rank and the collective (``ddp.distributed.watchdog``);
            default ``DDP_TIMEOUT`` seconds, else 30 minutes (torch's default).

    Raises:
        RuntimeError: when the default group already exists or the request cannot be met.
    """
    global _process_group
    if getattr(_local, "group", None) is not None:
        if getattr(_local, "init_pending", False) and backend in (None, "threads", "gloo", "nccl"):
            _local.init_pending = False
            return
        raise RuntimeError(
            f"init_process_group: rank {_local.group.rank()} already has a default process "
            "group (backend threads); call destroy_process_group() first"
        )
    if _process_group is not None:
        raise RuntimeError(
            f"init_process_group: the default process group is already initialised (backend "
            f"{_process_group.backend}); call destroy_process_group() first"
        )
    if timeout is not None:
        timeout_seconds(timeout)  # a bad value fails here, on every backend
    fell_back = backend == "nccl" and cupy_module() is None
    if fell_back:
        backend = None  # no GPU here: run the torch script on CPU (see the docstring)
    if backend in (None, "gloo", "auto"):
        backend = "mpi" if launched_with_several_ranks() else "local"
    if fell_back:
        warn_cpu_fallback('init_process_group(backend="nccl")',
                          f"the {backend!r} backend runs the collectives on the CPU")
    backend = backend.lower()
    if backend == "local":
        pg: ProcessGroup = LocalProcessGroup()
    elif backend == "mpi":
        from ddp.distributed.mpi_backend import init_mpi_world  # the backends load on demand

        pg = init_mpi_world(timeout)
    elif backend == "nccl":
        from ddp.distributed.nccl_backend import init_nccl_world

        pg = init_nccl_world(timeout)
    elif backend == "threads":
        raise RuntimeError(
            "init_process_group('threads'): simulated ranks are threads started by "
            "ddp.distributed.spawn(fn, world_size) or `ddprun --threads -n N script.py`"
        )
    else:
        raise ValueError(f"init_process_group: unknown backend {backend!r}; expected {BACKENDS}")
    if world_size not in (-1, None) and world_size != pg.size():
        pg.destroy()
        raise RuntimeError(
            f"init_process_group: world_size={world_size} but the {backend} launcher started "
            f"{pg.size()} rank(s)"
        )
    if rank not in (-1, None) and rank != pg.rank():
        pg.destroy()
        raise RuntimeError(f"init_process_group: rank={rank} but this process is rank {pg.rank()}")
    _process_group = pg


def destroy_process_group(group=None) -> None:
    """Forget the default group of this rank (not a collective)."""
    global _process_group
    if group is not None and not isinstance(group, _World) and group is not _current():
        group.destroy()
        return
    if getattr(_local, "group", None) is not None:
        _local.group = None
        _local.init_pending = False
        return
    if _process_group is not None:
        _process_group.destroy()
        _process_group = None


def get_default_group() -> ProcessGroup:
    """The calling rank's default ProcessGroup; RuntimeError before ``init_process_group``."""
    pg = _current()
    if pg is None:
        raise RuntimeError(
            "Default process group has not been initialized, please make sure to call "
            "init_process_group."
        )
    return pg


def resolve_group(group=None) -> ProcessGroup:
    """The ProcessGroup meant by a ``group=`` argument (None or group.WORLD: the default)."""
    if group is None or isinstance(group, _World):
        return get_default_group()
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"group must be a ProcessGroup, None or group.WORLD, got {group!r}")
    return group


def get_backend(group=None) -> str:
    return resolve_group(group).backend


def get_rank(group=None) -> int:
    """This rank in ``group`` (default: the world); -1 when not a member of ``group``."""
    return resolve_group(group).rank()


def get_world_size(group=None) -> int:
    """Number of ranks in ``group`` (default: the world)."""
    return resolve_group(group).size()


def get_local_rank() -> int:
    """Rank among the processes of this node (``LOCAL_RANK``); for threads, the rank."""
    pg = get_default_group()
    return pg.rank() if pg.local_rank is None else pg.local_rank


def get_global_rank(group: ProcessGroup, group_rank: int) -> int:
    """The world rank of ``group_rank`` in ``group``."""
    return resolve_group(group).global_ranks[group_rank]


def get_group_rank(group: ProcessGroup, global_rank: int) -> int:
    """The rank in ``group`` of world rank ``global_rank``; ValueError if not a member."""
    pg = resolve_group(group)
    try:
        return pg.global_ranks.index(global_rank)
    except ValueError:
        raise ValueError(
            f"rank {global_rank} is not a member of group {pg.name!r} {pg.global_ranks}"
        ) from None


def new_group(ranks: list[int] | None = None, **kwargs) -> ProcessGroup | None:
    """A group of the given world ranks; call on ALL ranks (non-members get None)."""
    world = get_default_group()
    if ranks is None:
        return world.dup()
    return world.new_subgroup(list(ranks))


def _set_thread_group(pg: ProcessGroup | None, init_pending: bool = False) -> None:
    """Bind ``pg`` as this thread's default group (used by spawn)."""
    _local.group = pg
    _local.init_pending = init_pending
