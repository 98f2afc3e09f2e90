"""Run a small script as an MPI job (``mpiexec`` or ``ddprun``) and time how long it takes."""

from __future__ import annotations

import os
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
            env: dict | None = None, name: str = "job.py"):
    """Run ``source`` on ``nproc`` ranks; returns (CompletedProcess, elapsed seconds).

    ``launcher`` is ``"mpiexec"`` (the environment's) or ``"ddprun"`` (``python -m
    ddp.launcher``). Skips when no mpiexec is installed.
    """
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    script = tmp_path / name
    script.write_text(source)
    if launcher == "mpiexec":
        cmd = [mpiexec, "-n", str(nproc), sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "ddp.launcher", "-n", str(nproc), str(script), *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_LIMIT_S,
                          env=mpi_env() if env is None else env)
    return proc, time.monotonic() - start
