"""Every environment variable ddp reads, in one table, and the only reads of ``os.environ``.

Each :class:`Switch` names a variable, its default, how its text is parsed, and *when* it is
read: ``"import"`` switches are read once, when the module that uses them is imported (the
module keeps the value in a constant that tests may monkeypatch); ``"call"`` switches are read
each time they are needed, so setting the variable later in the process takes effect.
docs/configuration.md is this table in prose; tests/test_config.py keeps the two in step.

    from ddp import config
    config.get("DDP_COMM_MODE")       # "thread" unless the variable says otherwise
    config.is_set("MKL_NUM_THREADS")  # the user chose a thread count

Invalid text raises ``ValueError`` naming the variable and what it accepts. Variables that other
software sets (MPI launchers' rank and size variables) are parsed leniently: text that is not a
number reads as absent, because ddp must not fail on a launcher's convention it does not know.

The only writes are :func:`default_blas_env` (OpenBLAS's spin time, before NumPy loads it),
:func:`adopt_launcher_env` (torchrun's ``RANK``... from the MPI launcher's
variables, at ``import ddp``), :func:`export_launch_env` (the same once MPI knows them) and
:func:`child_env` (the environment ``ddprun`` hands ``mpiexec``). Per-process state: the
environment is the process's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
COMM_MODES = ("thread", "nonblocking", "sync")  # the gradient-sync overlap modes (grad_sync)


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of {_TRUE + _FALSE}, got {text!r}")


def _text(name: str, text: str) -> str:
    return text


def _comm_mode(name: str, text: str) -> str:
    if text not in COMM_MODES:
        raise ValueError(f"{name} must be one of {COMM_MODES}, got {text!r}")
    return text


def _seconds(name: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
    return seconds


def _thread_count(name: str, text: str) -> int:
    # OpenMP allows a nesting list ("4,2"): the first entry is the outer (our) level.
    first = text.split(",", 1)[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise ValueError(f"{name} must be a positive integer (or an OpenMP list such as "
                         f"'4,2'), got {text!r}")
    return int(first)


def _launcher_int(name: str, text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _tasks_per_node(name: str, text: str) -> list[int] | None:
    """SLURM's compressed per-node task counts: ``"2(x3),1"`` is ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            return None
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


@dataclass(frozen=True)
class Switch:
    """One environment variable: ``parse(name, text)`` turns set, non-empty text into a value;
    unset or empty text means ``default``."""

    name: str
    default: Any
    parse: Callable[[str, str], Any]
    read: str  # "import" or "call": when the package reads it
    doc: str


SWITCHES: dict[str, Switch] = {s.name: s for s in (
    # ddp's own switches
    Switch("DDP_DEBUG", False, _flag, "import",
           "ddp.debug.enable() at import: warnings for silent training mistakes"),
    Switch("DDP_COMM_MODE", "thread", _comm_mode, "call",
           "DDP's gradient communication when comm_mode=None: thread, nonblocking or sync"),
    Switch("DDP_TIMEOUT", None, _seconds, "call",
           "seconds a collective may wait before the watchdog aborts the job (default 1800)"),
    Switch("DDP_EXIT_GRACE", 2.0, _seconds, "call",
           "seconds a collective may stay blocked after a rank of its group left the job"),
    Switch("DDP_RUN_DIR", None, _text, "call",
           "set by ddprun for its ranks: where each rank holds a liveness FIFO, its pid and "
           "how it ended"),
    Switch("DDP_TIMELINE", None, _text, "import",
           "directory: record a per-rank Chrome-trace timeline, written there at exit"),
    Switch("DDP_FUSED_KERNELS", True, _flag, "import",
           "0: GPU arrays take the NumPy-composed reference kernels (A/B timing, debugging)"),
    Switch("DDP_JIT", True, _flag, "import",
           "0: NumPy arrays take the NumPy reference kernels instead of the numba-compiled ones"),
    Switch("DDP_CUBLAS_DIRECT", True, _flag, "import",
           "0: GPU matrix products go through cupy.matmul instead of direct cuBLAS calls"),
    Switch("DDP_MPI_CUDA_AWARE", False, _flag, "import",
           "1: hand CuPy arrays to a CUDA-aware MPI directly instead of staging on the host"),
    # thread counts (the per-rank budget, ddp.distributed.cpu_threads)
    Switch("OMP_NUM_THREADS", None, _thread_count, "call",
           "threads per rank for BLAS and ddp's elementwise kernels; unset: cores / ranks"),
    Switch("OPENBLAS_NUM_THREADS", None, _text, "call",
           "set: the user chose BLAS threads, so ddp does not limit BLAS itself"),
    Switch("MKL_NUM_THREADS", None, _text, "call",
           "set: the user chose BLAS threads, so ddp does not limit BLAS itself"),
    Switch("OPENBLAS_THREAD_TIMEOUT", None, _text, "import",
           "read by OpenBLAS when it loads; ddp sets 14 (idle workers stop spinning after "
           "2^14 cycles) unless the user set it"),
    # set by MPI launchers (read leniently): several ranks means the mpi backend
    Switch("PMI_SIZE", None, _launcher_int, "call", "world size under MPICH/Hydra, Intel MPI"),
    Switch("OMPI_COMM_WORLD_SIZE", None, _launcher_int, "call", "world size under Open MPI"),
    Switch("MV2_COMM_WORLD_SIZE", None, _launcher_int, "call", "world size under MVAPICH"),
    Switch("SLURM_STEP_NUM_TASKS", None, _launcher_int, "call", "world size inside srun"),
    Switch("PMIX_RANK", None, _launcher_int, "call",
           "rank under a PMIx launcher (set alone, it means several ranks)"),
    Switch("PMI_RANK", None, _launcher_int, "call", "rank under MPICH/Hydra (timeline files)"),
    Switch("OMPI_COMM_WORLD_RANK", None, _launcher_int, "call",
           "rank under Open MPI (timeline files)"),
    Switch("SLURM_PROCID", None, _launcher_int, "call", "rank under srun (timeline files)"),
    # what launchers say of the node, read at import to fill in torchrun's variables
    Switch("MPI_LOCALRANKID", None, _launcher_int, "call", "rank on this node under MPICH/Hydra"),
    Switch("MPI_LOCALNRANKS", None, _launcher_int, "call", "ranks on this node under MPICH/Hydra"),
    Switch("PMI_LOCAL_RANK", None, _launcher_int, "call", "rank on this node under some PMI"),
    Switch("PMI_LOCAL_SIZE", None, _launcher_int, "call", "ranks on this node under some PMI"),
    Switch("OMPI_COMM_WORLD_LOCAL_RANK", None, _launcher_int, "call",
           "rank on this node under Open MPI"),
    Switch("OMPI_COMM_WORLD_LOCAL_SIZE", None, _launcher_int, "call",
           "ranks on this node under Open MPI"),
    Switch("SLURM_LOCALID", None, _launcher_int, "call", "rank on this node under srun"),
    Switch("SLURM_NODEID", None, _launcher_int, "call", "this node's index in the srun step"),
    Switch("SLURM_STEP_TASKS_PER_NODE", None, _tasks_per_node, "call",
           "tasks on each node of the srun step, e.g. 2(x3),1"),
    Switch("SLURM_NTASKS_PER_NODE", None, _launcher_int, "call",
           "tasks per node (sbatch/srun --ntasks-per-node)"),
    # torchrun's names: ddp writes them (adopt_launcher_env, export_launch_env), reads RANK back
    Switch("RANK", None, _launcher_int, "call", "this process's world rank (written by ddp)"),
    Switch("WORLD_SIZE", None, _launcher_int, "call", "ranks in the world (written by ddp)"),
    Switch("LOCAL_RANK", None, _launcher_int, "call", "rank on this node (written by ddp)"),
    Switch("LOCAL_WORLD_SIZE", None, _launcher_int, "call",
           "ranks on this node (written by ddp)"),
)}

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK")
USER_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _switch(name: str) -> Switch:
    try:
        return SWITCHES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in ddp.config.SWITCHES; declare it there") from None


def get(name: str) -> Any:
    """The value of switch ``name`` now: parsed text if set and non-empty, else its default.

    Raises:
        KeyError: ``name`` is not declared in :data:`SWITCHES`.
        ValueError: the text is invalid; the message names the variable and what it accepts.
    """
    switch = _switch(name)
    text = os.environ.get(name, "")
    return switch.parse(name, text) if text else switch.default


def is_set(name: str) -> bool:
    """True when ``name`` (a declared switch) is in the environment, even with empty text."""
    return _switch(name).name in os.environ


def any_set(names: Iterable[str]) -> bool:
    """True when any of ``names`` (declared switches) is in the environment."""
    return any(is_set(name) for name in names)


def launcher_env() -> dict[str, int]:
    """Torchrun's variables as the MPI launcher that started this process states them.

    Read from, in this order (the first launcher whose rank and size are both set wins, so an
    ``mpiexec`` inside a SLURM allocation is read as ``mpiexec``): Open MPI
    (``OMPI_COMM_WORLD_RANK``/``SIZE``/``LOCAL_RANK``/``LOCAL_SIZE``), MPICH/Hydra and Intel MPI
    (``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID`` or ``PMI_LOCAL_RANK``, ``MPI_LOCALNRANKS``
    or ``PMI_LOCAL_SIZE``), and a SLURM job step (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
    ``SLURM_LOCALID``, this node's entry of ``SLURM_STEP_TASKS_PER_NODE`` or else
    ``SLURM_NTASKS_PER_NODE``). SLURM counts only inside ``srun``: a batch script also has
    ``SLURM_PROCID`` but is a single process.

    Returns:
        A dict with ``RANK`` and ``WORLD_SIZE``, plus ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` when
        the launcher says them; empty when no launcher variables are set. Initialises nothing.
    """
    launchers = (
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", ("OMPI_COMM_WORLD_LOCAL_RANK",),
         ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
        ("PMI_RANK", "PMI_SIZE", ("MPI_LOCALRANKID", "PMI_LOCAL_RANK"),
         ("MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")),
        ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", ("SLURM_LOCALID",), ()),
    )
    for rank_var, size_var, local_rank_vars, local_size_vars in launchers:
        rank, size = get(rank_var), get(size_var)
        if rank is None or size is None:
            continue
        found = {"RANK": rank, "WORLD_SIZE": size}
        local_rank = next((v for v in map(get, local_rank_vars) if v is not None), None)
        local_size = next((v for v in map(get, local_size_vars) if v is not None), None)
        if rank_var == "SLURM_PROCID":
            local_size = _slurm_local_size()
        if local_rank is not None:
            found["LOCAL_RANK"] = local_rank
        if local_size is not None:
            found["LOCAL_WORLD_SIZE"] = local_size
        return found
    return {}


def _slurm_local_size() -> int | None:
    per_node, node = get("SLURM_STEP_TASKS_PER_NODE"), get("SLURM_NODEID")
    if per_node is not None and node is not None and node < len(per_node):
        return per_node[node]
    return get("SLURM_NTASKS_PER_NODE")


def adopt_launcher_env() -> dict[str, int]:
    """Set torchrun's variables from the MPI launcher's (:func:`launcher_env`), before any
    process group exists, so a torchrun script reading ``os.environ["LOCAL_RANK"]`` before
    ``init_process_group`` runs unchanged under ``mpiexec``/``srun``. ``import ddp`` calls it.

    When any of ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` is already set
    (by torchrun, by the user), none is touched: they describe that launch, not the MPI one.

    Returns:
        The variables it set (empty when it set none).
    """
    if any_set(TORCHRUN_VARS):
        return {}
    found = launcher_env()
    for name, value in found.items():
        os.environ[_switch(name).name] = str(value)
    return found


def export_launch_env(rank: int, world_size: int, local_rank: int, local_world_size: int) -> None:
    """Set torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` for this
    process (and the programs it starts), as a torchrun-launched script expects them."""
    values = {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_RANK": local_rank,
              "LOCAL_WORLD_SIZE": local_world_size}
    for name, value in values.items():
        os.environ[_switch(name).name] = str(int(value))


BLAS_SPIN_LOG2_CYCLES = "14"


def default_blas_env() -> None:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` (unless the user did) before OpenBLAS loads.

    After a multi-threaded call, OpenBLAS's idle workers spin on their cores for 2^28 cycles
    (about 0.1 s) by default, taking those cores from the rank's own threads (compiled
    kernels, convolution chunks) that run next: a 2-thread GEMM before the MNIST CNN's conv2
    backward made that backward 1.7x slower. 2^14 cycles (a few microseconds) keeps the
    workers warm between back-to-back GEMMs only. OpenBLAS reads the variable once, when NumPy
    loads it: ``import ddp`` sets it first thing (effective when ddp is imported before
    NumPy), and ``ddprun`` hands it to every rank.
    """
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_SPIN_LOG2_CYCLES)


def child_env(nproc: int) -> dict[str, str]:
    """The environment for ``nproc`` launched ranks: this one, with ``OMP_NUM_THREADS=1`` unless
    the user set it (torchrun's rule: N ranks per node must not each start a thread per core),
    and without torchrun's ``RANK``... of this process: each rank takes its own from the MPI
    launcher (:func:`adopt_launcher_env`), as torchrun's workers get theirs from torchrun."""
    env = {name: text for name, text in os.environ.items() if name not in TORCHRUN_VARS}
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_SPIN_LOG2_CYCLES)  # see default_blas_env
    if nproc > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env
