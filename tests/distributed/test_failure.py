"""An unhandled exception on one MPI rank ends the whole job quickly instead of hanging it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ddp.launcher import find_mpiexec

RAISE_IN_MAIN = """
import numpy as np
import ddp.distributed as dist
dist.init_process_group()
if dist.get_rank() == 1:
    raise ValueError("rank one is broken")
dist.get_default_group().allreduce(np.ones(3))  # ranks 0 and 2 wait here forever without abort
dist.barrier()
print("unreachable", flush=True)
"""

RAISE_IN_THREAD = """
import threading
import ddp.distributed as dist
dist.init_process_group()
def work():
    if dist.get_rank() == 2:
        raise KeyError("comm thread trouble")
t = threading.Thread(target=work, name="comm")
t.start()
t.join()
dist.barrier()
print("unreachable", flush=True)
"""


def _mpi_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_mpi(tmp_path, source: str, nproc: int = 3):
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    script = tmp_path / "job.py"
    script.write_text(source)
    start = time.monotonic()
    proc = subprocess.run([mpiexec, "-n", str(nproc), sys.executable, str(script)],
                          capture_output=True, text=True, timeout=60, env=_mpi_env())
    return proc, time.monotonic() - start


def test_exception_on_one_rank_aborts_all_ranks(tmp_path):
    proc, elapsed = _run_mpi(tmp_path, RAISE_IN_MAIN)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 10, f"job took {elapsed:.1f}s to die:\n{out}"  # functional: no hang
    assert "[rank 1] Traceback (most recent call last):" in out
    assert "[rank 1] ValueError: rank one is broken" in out
    assert "unreachable" not in out


def test_exception_in_a_thread_aborts_all_ranks(tmp_path):
    proc, elapsed = _run_mpi(tmp_path, RAISE_IN_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 10, f"job took {elapsed:.1f}s to die:\n{out}"
    assert "[rank 2] Unhandled KeyError in thread 'comm'" in out
    assert "unreachable" not in out


UNEVEN_BACKWARDS = """
from datetime import timedelta
import ddp
import ddp.distributed as dist
from ddp.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group(timeout=timedelta(seconds=2))
model = DDP(ddp.nn.Linear(4, 2))
steps = 3 if dist.get_rank() == 0 else 2  # uneven data: rank 0 has one batch more
for _ in range(steps):
    model(ddp.ones(2, 4)).sum().backward()
dist.barrier()
print("unreachable", flush=True)
"""

UNMATCHED_COLLECTIVE = """
import numpy as np
import ddp.distributed as dist
dist.init_process_group()
if dist.get_rank() == 0:
    dist.get_default_group().allreduce(np.ones(3))  # the other ranks never issue it
print(f"rank {dist.get_rank()} done", flush=True)
"""


def test_uneven_backwards_end_the_job_at_the_timeout(tmp_path):
    proc, elapsed = _run_mpi(tmp_path, UNEVEN_BACKWARDS)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 20, f"job took {elapsed:.1f}s to die:\n{out}"
    assert "waited" in out and "past the timeout of 2 s" in out, out
    assert "different numbers of backward()" in out
    assert "unreachable" not in out


def test_collective_issued_by_one_rank_only_ends_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("DDP_TIMEOUT", "1.5")
    proc, elapsed = _run_mpi(tmp_path, UNMATCHED_COLLECTIVE, nproc=2)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 20, f"job took {elapsed:.1f}s to die:\n{out}"
    assert "[rank 0] collective #" in out and "allreduce(float64, numel=3" in out, out
    assert "past the timeout of 1.5 s" in out


def test_timeout_values_are_checked():
    from datetime import timedelta

    from ddp.distributed import watchdog

    assert watchdog.timeout_seconds(timedelta(minutes=2)) == 120.0
    assert watchdog.timeout_seconds(3) == 3.0
    with pytest.raises(ValueError, match="timeout must be positive"):
        watchdog.timeout_seconds(timedelta(0))
    os.environ["DDP_TIMEOUT"] = "soon"
    try:
        with pytest.raises(ValueError, match="DDP_TIMEOUT must be a number of seconds"):
            watchdog.timeout_seconds()
    finally:
        del os.environ["DDP_TIMEOUT"]
