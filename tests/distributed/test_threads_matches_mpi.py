"""Simulated ranks are a faithful debugger: ``ddprun --threads -n 2`` trains the main job to the
same parameters as ``mpiexec -n 2`` (same data shards, same seeds, same averaged gradients)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ddp

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
TRAIN_ARGS = ["--epochs", "2", "--max-steps", "8", "--no-progress"]


def _train(command: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, str(ROOT / "examples" / "train.py"), *TRAIN_ARGS, "--out", str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return ddp.load(str(out / "checkpoint.ddp"))["model"]


def test_threads_mode_trains_to_the_same_parameters_as_mpiexec(tmp_path):
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    launcher = [sys.executable, "-m", "ddp.launcher", "-n", "2", "--threads"]
    threads_state = _train(launcher, tmp_path / "threads")
    mpi_state = _train([str(MPIEXEC), "-n", "2", sys.executable], tmp_path / "mpi")
    single_state = _train([sys.executable], tmp_path / "single")
    assert threads_state.keys() == mpi_state.keys()
    for name in mpi_state:
        np.testing.assert_allclose(threads_state[name].numpy(), mpi_state[name].numpy(),
                                   rtol=0, atol=1e-6, err_msg=name)
    # and training did happen: the 2-rank run differs from the 1-rank run (other shards).
    differs = [not np.allclose(mpi_state[k].numpy(), single_state[k].numpy()) for k in mpi_state]
    assert any(differs)
