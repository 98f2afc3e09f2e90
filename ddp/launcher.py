"""``ddprun``: start a training script on N ranks (``python -m ddp.launcher`` works too).

    ddprun -n 4 train.py --epochs 3          # mpiexec -n 4 <this python> train.py --epochs 3
    ddprun -n 4 --hostfile hosts train.py    # ranks spread over the hosts in the file
    ddprun -n 4 --threads train.py           # 4 simulated ranks as threads of one process

The MPI mode runs the ``mpiexec`` installed with this Python environment (the ``mpich`` wheel
puts it next to ``python``), falling back to the one on PATH, and exits with its status: an
unhandled exception on any rank aborts the job (see ``ddp.distributed.failure``). The threads
mode runs the script's ``__main__`` once per rank inside :func:`ddp.distributed.spawn`, where
``init_process_group()`` is a no-op and ``get_rank()`` answers per thread.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

from ddp import config
from ddp.distributed import SpawnError, spawn

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
    proc = subprocess.Popen(cmd, env=config.child_env(args.nproc))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # mpiexec got the same SIGINT and stops the ranks
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
