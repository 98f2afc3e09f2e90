"""Torchrun's RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE are readable right after ``import ddp``.

Scripts written for torchrun read them from ``os.environ`` before ``init_process_group``; under
``mpiexec`` or ``srun``, ``import ddp`` fills them in from the launcher's own variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddp import config, launcher

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "SLURM_", "MV2_")
# one write per rank: ranks print concurrently, and print(*items) writes item by item
PRINT_ENV = ("import os, sys; import ddp; "
             "words = [os.environ.get(n, '-') for n in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', "
             "'LOCAL_WORLD_SIZE')] + ['mpi' if 'mpi4py' in sys.modules else 'no-mpi']; "
             "sys.stdout.write(' '.join(words) + chr(10)); sys.stdout.flush()")


def _clean_env(**extra: str) -> dict:
    """This environment without any launcher's or torchrun's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(LAUNCHER_PREFIXES) and k not in config.TORCHRUN_VARS}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def _mpiexec() -> str:
    try:
        return launcher.find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("nranks", [2, 3])
def test_mpiexec_ranks_read_torchrun_variables_before_init(nranks):
    proc = subprocess.run([_mpiexec(), "-n", str(nranks), sys.executable, "-c", PRINT_ENV],
                          capture_output=True, text=True, timeout=120, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.split("\n")[:-1])
    # one node: the local rank is the rank; MPI itself was never imported
    assert lines == [f"{r} {nranks} {r} {nranks} no-mpi" for r in range(nranks)], proc.stdout


def _run_python(env: dict) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PRINT_ENV], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_srun_step_variables_are_read():
    env = _clean_env(SLURM_PROCID="5", SLURM_STEP_NUM_TASKS="8", SLURM_NTASKS="8",
                     SLURM_LOCALID="1", SLURM_NODEID="1", SLURM_STEP_TASKS_PER_NODE="4(x2)")
    assert _run_python(env) == ["5", "8", "1", "4", "no-mpi"]


def test_slurm_batch_script_is_one_process():
    # sbatch's script has SLURM_PROCID and SLURM_NTASKS but is not one of N ranks (no srun step)
    env = _clean_env(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_LOCALID="0")
    assert _run_python(env) == ["-", "-", "-", "-", "no-mpi"]


def test_open_mpi_variables_are_read():
    env = _clean_env(OMPI_COMM_WORLD_RANK="3", OMPI_COMM_WORLD_SIZE="6",
                     OMPI_COMM_WORLD_LOCAL_RANK="0", OMPI_COMM_WORLD_LOCAL_SIZE="3")
    assert _run_python(env) == ["3", "6", "0", "3", "no-mpi"]


def test_torchrun_values_already_set_are_kept():
    # torchrun inside an srun allocation: SLURM_PROCID is the node, RANK is torchrun's worker
    env = _clean_env(RANK="7", WORLD_SIZE="16", LOCAL_RANK="3", LOCAL_WORLD_SIZE="8",
                     SLURM_PROCID="1", SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID="0")
    assert _run_python(env) == ["7", "16", "3", "8", "no-mpi"]


def test_launcher_env_priority_and_partial_information(monkeypatch):
    for name in config.SWITCHES:
        if name.startswith(LAUNCHER_PREFIXES) or name in config.TORCHRUN_VARS:
            monkeypatch.setenv(name, "")  # recorded, so teardown restores what was there
            monkeypatch.delenv(name)  # (adopt_launcher_env below writes os.environ itself)
    assert config.launcher_env() == {}
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    assert config.launcher_env() == {"RANK": 0, "WORLD_SIZE": 4, "LOCAL_WORLD_SIZE": 2}
    # mpiexec inside a SLURM allocation: the MPI launcher's variables win
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_LOCAL_RANK", "1")
    assert config.launcher_env() == {"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": 1}
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    assert config.adopt_launcher_env() == {"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": 1,
                                           "LOCAL_WORLD_SIZE": 2}
    assert (os.environ["RANK"], os.environ["LOCAL_WORLD_SIZE"]) == ("1", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    assert config.adopt_launcher_env() == {}  # already set: left alone
    assert os.environ["RANK"] == "1"


def test_slurm_tasks_per_node_list(monkeypatch):
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x3),1")
    assert config.get("SLURM_STEP_TASKS_PER_NODE") == [2, 2, 2, 1]
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "weird")
    assert config.get("SLURM_STEP_TASKS_PER_NODE") is None


def test_ddprun_hands_each_rank_its_own_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("LOCAL_RANK", "9")
    env = config.child_env(2)
    assert not set(config.TORCHRUN_VARS) & set(env)
    script = tmp_path / "show.py"
    script.write_text(PRINT_ENV.replace("; ", "\n"))
    _mpiexec()
    proc = subprocess.run([sys.executable, "-m", "ddp.launcher", "-n", "2", str(script)],
                          capture_output=True, text=True, timeout=120,
                          env=_clean_env(RANK="9", LOCAL_RANK="9"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:-1]) == ["0 2 0 2 no-mpi", "1 2 1 2 no-mpi"]
