"""Ranks sharing a node share its cores unless the user chose a thread count: one budget
per rank for BLAS and ddp's elementwise pool."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import threadpoolctl  # a declared dependency (pyproject.toml): missing is a broken install

from ddp import launcher
from ddp.distributed import cpu_threads
from ddp.kernels import parallel

ROOT = Path(__file__).resolve().parents[2]
BUDGET_SCRIPT = """
import threadpoolctl
import ddp.distributed as dist
from ddp.kernels import parallel
dist.init_process_group("mpi")
blas = sorted({p["num_threads"] for p in threadpoolctl.threadpool_info()
               if p["user_api"] == "blas"})
print(f"rank {dist.get_rank()} local {dist.get_local_rank()} pool {parallel.num_threads()} "
      f"blas {blas}", flush=True)
dist.destroy_process_group()
"""


@pytest.fixture
def no_thread_settings(monkeypatch):
    for name in cpu_threads._USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    yield
    parallel.set_num_threads(None)
    if cpu_threads._limiter is not None:
        cpu_threads._limiter.restore_original_limits()
        cpu_threads._limiter = None


def test_ranks_on_one_node_split_the_cores(no_thread_settings, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads.share_cores(4) == 2
    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(n == 2 for n in blas)
    assert parallel.num_threads() == 2  # the elementwise pool obeys the same budget


def test_more_ranks_than_cores_get_one_thread(no_thread_settings, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpu_threads.share_cores(4) == 1
    assert parallel.num_threads() == 1


def test_user_setting_and_single_rank_are_left_alone(no_thread_settings, monkeypatch):
    assert cpu_threads.share_cores(1) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads.share_cores(4) is None
    assert parallel.num_threads() == 3  # OMP_NUM_THREADS is the budget of all of them


def test_blas_setting_leaves_blas_alone_but_the_pool_takes_its_share(no_thread_settings,
                                                                     monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "5")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info()]
    assert cpu_threads.share_cores(2) == 4
    assert parallel.num_threads() == 4
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info()] == before


def test_bare_mpiexec_ranks_get_their_share_of_the_node(tmp_path):
    """``mpiexec -n 2`` with no thread variable: the pool and BLAS get cores // 2 (at least 1)."""
    try:
        mpiexec = launcher.find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    script = tmp_path / "budget.py"
    script.write_text(BUDGET_SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_")) and k not in cpu_threads._USER_SETTINGS}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    # The ranks' lines may arrive interleaved on one line of mpiexec's output: match records.
    lines = sorted(re.findall(r"rank \d+ local \d+ pool \d+ blas \[[\d, ]*\]", proc.stdout))
    assert lines == [f"rank {r} local {r} pool {share} blas [{share}]" for r in range(2)], \
        proc.stdout + proc.stderr
