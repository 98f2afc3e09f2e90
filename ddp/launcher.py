"""``ddprun``: start a training script on N ranks (``python -m ddp.launcher`` works too).

    ddprun -n 4 train.py --epochs 3          # mpiexec -n 4 <this python> train.py --epochs 3
    ddprun -n 4 --hostfile hosts train.py    # ranks spread over the hosts in the file
    ddprun -n 4 --threads train.py           # 4 simulated ranks as threads of one process

The MPI mode runs the ``mpiexec`` installed with this Python environment (the ``mpich`` wheel
puts it next to ``python``), falling back to the one on PATH, and exits with its status: an
unhandled exception on any rank aborts the job (see ``ddp.distributed.failure``). SIGTERM,
SIGINT and SIGHUP are forwarded to mpiexec, and no rank process of this host outlives
``ddprun``. A rank of this host that vanishes without ddp saying why (``os._exit``, a signal,
a crash in native code; mpiexec then kills the others silently) is named through the FIFOs
the ranks hold open in ``DDP_RUN_DIR`` (``ddp.distributed.run_dir``). The threads
mode runs the script's ``__main__`` once per rank inside :func:`ddp.distributed.spawn`, where
``init_process_group()`` is a no-op and ``get_rank()`` answers per thread.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ddp import config
from ddp.distributed import SpawnError, spawn
from ddp.distributed.run_dir import RankWatcher, kill, start_time

INSTALL_HINT = (
    "install one into this environment with `pip install mpich` (or `pip install mpi4py` "
    "against your cluster's MPI, see docs/launching.md), or pass --mpiexec PATH"
)


def find_mpiexec() -> str:
    """The mpiexec of this Python environment, else the first on PATH; FileNotFoundError."""
    for name in ("mpiexec", "mpirun"):
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        f"ddprun: no mpiexec next to {sys.executable} nor on PATH; {INSTALL_HINT}"
    )


def _hostfile_flag(mpiexec: str) -> str:
    """``-f`` for MPICH's Hydra, ``--hostfile`` for Open MPI and others."""
    try:
        version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    return "-f" if "HYDRA" in version.upper() else "--hostfile"


def build_mpi_command(args: argparse.Namespace) -> list[str]:
    """The mpiexec command line that ``ddprun`` runs for ``args``."""
    mpiexec = args.mpiexec or find_mpiexec()
    cmd = [mpiexec, "-n", str(args.nproc)]
    if args.hostfile:
        if not Path(args.hostfile).is_file():
            raise FileNotFoundError(f"ddprun: hostfile {args.hostfile!r} does not exist")
        cmd += [_hostfile_flag(mpiexec), args.hostfile]
    for extra in args.mpi_arg:
        cmd += extra.split()
    return cmd + [sys.executable, args.script, *args.script_args]


def run_threads(nproc: int, script: str, script_args: list[str]) -> int:
    """Run ``script`` as ``nproc`` simulated ranks in this process; return an exit status."""
    path = Path(script)
    if not path.is_file():
        print(f"ddprun: script {script!r} not found", file=sys.stderr)
        return 2
    sys.argv = [script, *script_args]
    sys.path.insert(0, str(path.resolve().parent))  # as `python script.py` does

    def rank_main() -> None:
        runpy.run_path(script, run_name="__main__")

    try:
        spawn(rank_main, nproc)
    except SpawnError as err:
        print(f"ddprun --threads: {err}", file=sys.stderr)
        code = getattr(err.exception, "code", 1) if isinstance(err.exception, SystemExit) else 1
        return code if isinstance(code, int) and code != 0 else 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ddprun",
        description="Run a ddp training script on N ranks (MPI processes or threads).",
    )
    parser.add_argument("-n", "--nproc", "--nproc-per-node", "-np", dest="nproc", type=int,
                        default=1, help="number of ranks (default 1)")
    parser.add_argument("--threads", action="store_true",
                        help="simulate the ranks as threads of one process (no MPI)")
    parser.add_argument("--hostfile", help="hosts to place ranks on (passed to mpiexec)")
    parser.add_argument("--mpiexec", help="mpiexec to use instead of the one found")
    parser.add_argument("--mpi-arg", action="append", default=[],
                        help="extra mpiexec arguments, e.g. --mpi-arg='-ppn 4' (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument("script", help="the Python script to run on every rank")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments of the script")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"-n must be >= 1, got {args.nproc}")
    if args.threads and args.hostfile:
        parser.error("--threads runs in one process; it cannot use --hostfile")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ddprun``; returns (and as a script exits with) the job's status."""
    args = parse_args(argv)
    if args.threads:
        if args.dry_run:
            print(f"threads x{args.nproc}: {args.script} {' '.join(args.script_args)}")
            return 0
        return run_threads(args.nproc, args.script, args.script_args)
    try:
        cmd = build_mpi_command(args)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 127
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    return run_mpi(cmd, args.nproc)


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 5.0  # after a forwarded signal, how long mpiexec may take to stop the ranks
# After a rank of this host failed (see _failed), how long mpiexec may take to end the job
# before ddprun kills it: MPICH's Hydra ends it within 1-3 s, even on a loaded machine.
END_GRACE_S = 10.0


def run_mpi(cmd: list[str], nproc: int) -> int:
    """Run the mpiexec command ``cmd`` for ``nproc`` ranks; return the job's exit status.

    Signals in :data:`FORWARDED` go to mpiexec, which stops the ranks; whatever still runs
    ``STOP_GRACE_S`` later (mpiexec, its proxies, ranks of this host) is killed. A rank that
    ended first without ddp saying why is named on stderr, and such a job never exits 0.
    """
    with tempfile.TemporaryDirectory(prefix="ddprun-") as run_dir:
        env = config.child_env(nproc)
        env["DDP_RUN_DIR"] = run_dir
        proc = subprocess.Popen(cmd, env=env)
        watcher = RankWatcher(run_dir)
        signals: list[int] = []
        tree: dict[int, str | None] = {}

        def forward(signum, frame) -> None:
            signals.append(signum)
            tree.update(_descendants(proc.pid))  # ranks run in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        try:
            code, ender = _wait(proc, watcher, signals, tree)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            kill({**tree, **watcher.alive()})  # nothing of this job outlives ddprun
            watcher.close()
        return _report(code, ender, watcher, signals)


def _wait(proc: subprocess.Popen, watcher: RankWatcher, signals: list[int],
          tree: dict[int, str | None]) -> tuple[int, str]:
    """Wait for mpiexec, watching the ranks; kill the job if mpiexec outlasts a signal or the
    failure of a rank (see :data:`END_GRACE_S`). Returns the job's exit status (a signal that
    ended mpiexec as 128 + its number) and who ended the job: "mpiexec" or "ddprun"."""
    deadline = None
    ender = "mpiexec"
    while proc.poll() is None:
        watcher.poll(_ended_fds(watcher, 0.1))
        if signals and deadline is None:
            deadline = time.monotonic() + STOP_GRACE_S
        if deadline is None and _failed(watcher):
            deadline = time.monotonic() + END_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            if not signals:
                ender = "ddprun"
                print(f"ddprun: mpiexec had not ended the job {END_GRACE_S:.0f} s after a "
                      f"rank failed; ddprun killed it", file=sys.stderr, flush=True)
            tree.update(_descendants(proc.pid))
            kill({**tree, proc.pid: start_time(proc.pid), **watcher.alive()})
            deadline = float("inf")  # once: proc.poll() sees mpiexec gone
    watcher.poll(_ended_fds(watcher, 0))
    code = proc.wait()
    return (128 - code if code < 0 else code), ender


def _failed(watcher: RankWatcher) -> bool:
    """Whether a rank of this host ended in a way that must end the whole job: without ddp
    saying why, or after ddp aborted the job (mpiexec then kills the others)."""
    return bool(watcher.unexplained_end()) or (
        bool(watcher.ended) and any(watcher.marked(r, "abort") for r in watcher.pids))


def _ended_fds(watcher: RankWatcher, timeout: float) -> list[int]:
    """The watcher's pidfds whose processes ended, waiting up to ``timeout`` for one."""
    fds = watcher.fds()
    if not fds:
        time.sleep(timeout)
        return []
    return select.select(fds, [], [], timeout)[0]


def _report(code: int, ender: str, watcher: RankWatcher, signals: list[int]) -> int:
    first = watcher.unexplained_end()
    if first:
        others = sorted(r for r in watcher.pids if r not in first)
        who = (f"rank {first[0]} (pid {watcher.pids[first[0]]})" if len(first) == 1
               else f"one of ranks {first}")
        print(f"ddprun: {who} ended first without ddp saying why (os._exit, a signal, or a "
              f"crash in native code) while ranks {others} still ran; {ender} ended the job "
              f"(status {code})", file=sys.stderr, flush=True)
        return code if code != 0 else 1
    if signals and code == 0:
        return 128 + signals[0]
    return code


def _descendants(pid: int) -> dict[int, str | None]:
    """``pid``'s process tree, pid -> start time (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: dict[int, str | None] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = start_time(child)
                todo.append(child)
    return found


if __name__ == "__main__":
    sys.exit(main())
