"""Run a small script as an MPI job (``mpiexec`` or ``ddprun``) and time how long it takes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from ddp.launcher import find_mpiexec

JOB_LIMIT_S = 60  # a job that has not ended by then hangs; the tests' own bounds are lower


def mpi_env(**extra: str) -> dict:
    """This environment (PYTHONPATH included) without a surrounding launcher's variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "DDP_"))}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_job(tmp_path, source: str, nproc: int, *args: str, launcher: str = "mpiexec",
            env: dict | None = None, name: str = "job.py", launcher_args: tuple = ()):
    """Run ``source`` on ``nproc`` ranks; returns (CompletedProcess, elapsed seconds).

    ``launcher`` is ``"mpiexec"`` (the environment's) or ``"ddprun"`` (``python -m
    ddp.launcher``); ``launcher_args`` go to it, ``args`` to the script. Skips when no mpiexec
    is installed.
    """
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    script = tmp_path / name
    script.write_text(source)
    if launcher == "mpiexec":
        cmd = [mpiexec, "-n", str(nproc), *launcher_args, sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "ddp.launcher", "-n", str(nproc), *launcher_args,
               str(script), *args]
    start = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=mpi_env() if env is None else env) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=JOB_LIMIT_S)
        except subprocess.TimeoutExpired:
            # A hang: say where every process of the job was, then leave none behind (they
            # would load the machine for the tests that follow).
            snapshot = _processes_running(str(script))
            _kill_job(popen, str(script))
            stdout, stderr = popen.communicate()
            pytest.fail(f"{' '.join(cmd)} had not ended after {JOB_LIMIT_S} s; its processes "
                        f"then:\n{snapshot}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    return proc, time.monotonic() - start


def _processes_running(script: str) -> str:
    """``ps`` lines of the processes whose command line names ``script`` (launcher, mpiexec,
    ranks), with their state and the kernel function they wait in."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,stat,etime,wchan:24,args"],
                        capture_output=True, text=True).stdout.splitlines()
    return "\n".join(ps[:1] + [line for line in ps[1:] if script in line])


def _kill_job(popen: subprocess.Popen, script: str) -> None:
    popen.kill()
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in ps.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if script in args and int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)
