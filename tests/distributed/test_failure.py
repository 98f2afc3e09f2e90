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


def _state(rank, waits=(), last=None, left=None):
    return {"rank": rank, "waits": list(waits), "last": last, "left": left}


def test_explainer_groups_ranks_and_names_the_one_behind():
    from ddp.distributed.watchdog import explain

    bcast = ("#11 broadcast(float32, numel=4, src=0) of group 'WORLD'", "train.py:120 in main")
    reduce = ("#12 allreduce(float32, numel=4, op=SUM) of group 'WORLD'", "train.py:88 in main")
    text = explain({0: _state(0, [(*bcast, 5.0)]), 1: _state(1, [(*reduce, 6.0)]),
                    2: _state(2, [(*bcast, 5.5)])}, 3)
    assert text == (
        "Where every rank is: ranks 0, 2 are in #11 broadcast(float32, numel=4, src=0) of group "
        "'WORLD' from train.py:120 in main; rank 1 is in #12 allreduce(float32, numel=4, "
        "op=SUM) of group 'WORLD' from train.py:88 in main (waiting 6.0 s). Behind or "
        "elsewhere: rank 1.")


def test_explainer_names_silent_and_departed_ranks():
    from ddp.distributed.watchdog import explain

    reduce = ("#3 allreduce(float64, numel=3, op=SUM) of group 'WORLD'", "job.py:9 in <module>")
    text = explain({0: _state(0, [(*reduce, 4.0)]),
                    1: _state(1, last=(*reduce, 9.0), left="its script ended")}, 3)
    assert "rank 0 is in #3 allreduce" in text
    assert "rank 1 is past the end of its script (its script ended)" in text
    assert "rank 2 is not answering within 2 s (dead, or stuck in code that holds the GIL)" \
        in text
    assert text.endswith("Behind or elsewhere: ranks 1, 2.")


def test_explainer_without_a_majority_says_the_ranks_differ():
    from ddp.distributed.watchdog import explain

    text = explain({0: _state(0, [("#2 barrier() of group 'WORLD'", "a.py:1 in f", 3.0)]),
                    1: _state(1, [("#2 allreduce() of group 'WORLD'", "a.py:2 in f", 3.0)])}, 2)
    assert "The ranks wait in different collectives" in text
    assert "Behind or elsewhere" not in text


def test_call_site_is_the_first_frame_outside_ddp():
    from ddp.distributed.watchdog import Watchdog

    dog = Watchdog(rank=0, size=2, timeout_s=60.0)
    try:
        token = dog.begin("#1 barrier() of group 'WORLD'"); line = sys._getframe().f_lineno  # noqa: E702
        state = dog.state()
    finally:
        dog.stop()
    assert state["waits"][0][:2] == ("#1 barrier() of group 'WORLD'",
                                     f"test_failure.py:{line} in "
                                     "test_call_site_is_the_first_frame_outside_ddp")
    dog.end(token)
    assert dog.last() == ("#1 barrier() of group 'WORLD'",
                          f"test_failure.py:{line} in "
                          "test_call_site_is_the_first_frame_outside_ddp")
