"""Every way a rank can leave an MPI job ends the job promptly, and names the rank where ddp can.

Each test runs a real job under ``mpiexec -n 2`` and ``-n 3`` (or ``ddprun``) and checks the
exit status, that it ended within a generous bound (hang tests: 30 s, against the watchdog's
30 minutes) and the words of the message.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from ._mpi_jobs import mpi_env, run_job

BOUND_S = 30

LEAVE_EARLY = """
import sys
import numpy as np
import ddp.distributed as dist
dist.init_process_group()
pg = dist.get_default_group()
for step in range(5):
    if dist.get_rank() == 1 and step == 2:
        {leave}
    pg.allreduce(np.ones(3))
print(f"rank {{dist.get_rank()}} past the loop", flush=True)
"""


@pytest.mark.parametrize("nproc", [2, 3])
@pytest.mark.parametrize("leave", ["sys.exit(0)", "sys.exit(1)", "break"])
def test_rank_that_leaves_while_others_run_collectives_ends_the_job(tmp_path, nproc, leave):
    proc, elapsed = run_job(tmp_path, LEAVE_EARLY.format(leave=leave), nproc)
    out = proc.stdout + proc.stderr
    # sys.exit(0) too: the job did not finish, so mpiexec reports the abort's status 1.
    assert proc.returncode == 1, out
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s:\n{out}"
    assert "rank 1 left the job (its script ended: the end of the script or sys.exit) after " \
           "its last collective #2 allreduce(float64, numel=3, op=SUM) of group 'WORLD' " \
           "from job.py:10 in <module>" in out, out
    assert "waits in #3 allreduce(float64, numel=3, op=SUM) of group 'WORLD'" in out
    assert "which rank 1 will never join; ending the job" in out
    assert "[rank 0]" in out or "[rank 2]" in out
    assert "rank 0 past the loop" not in out  # (rank 1 gets there when its loop breaks)


FEWER_STEPS = """
import ddp
import ddp.distributed as dist
from ddp.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group()
model = DDP(ddp.nn.Linear(4, 2))
steps = 3 if dist.get_rank() == 0 else 2  # uneven data: rank 0 has one batch more
for _ in range(steps):
    model(ddp.ones(2, 4)).sum().backward()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("nproc", [2, 3])
def test_ranks_running_fewer_steps_end_the_job_naming_them(tmp_path, nproc):
    proc, elapsed = run_job(tmp_path, FEWER_STEPS, nproc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s:\n{out}"
    assert "[rank 0] rank " in out and " left the job (its script ended" in out, out
    assert "of group 'WORLD.dup' from thread 'ddp-comm-rank1'" in out or nproc == 3, out
    assert "while rank 0 waits in #3 allreduce(float32, numel=10, op=SUM) of group " \
           "'WORLD.dup' from thread 'ddp-comm-rank0'" in out


UNEVEN_END = """
import time
import numpy as np
import ddp.distributed as dist
dist.init_process_group()
dist.get_default_group().allreduce(np.ones(3))
if dist.get_rank() == 0:
    time.sleep(4)  # writing a checkpoint while the others have ended: not a failure
print(f"rank {dist.get_rank()} ends", flush=True)
"""


@pytest.mark.parametrize("nproc", [2, 3])
def test_ranks_that_end_at_different_times_end_normally(tmp_path, nproc):
    proc, _ = run_job(tmp_path, UNEVEN_END, nproc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # ranks print concurrently, so lines may run together: match, then sort
    assert sorted(re.findall(r"rank \d ends", proc.stdout)) == [
        f"rank {r} ends" for r in range(nproc)]
    assert "left the job" not in out


BEFORE_INIT = """
import os
import sys
import numpy as np
import ddp.distributed as dist
if os.environ["PMI_RANK"] == "1":
    {fail}
dist.init_process_group()
dist.get_default_group().allreduce(np.ones(3))
print("unreachable", flush=True)
"""


@pytest.mark.parametrize("nproc", [2, 3])
def test_exception_before_init_ends_the_job_naming_the_rank(tmp_path, nproc):
    source = BEFORE_INIT.format(fail='raise ValueError("no data for this rank")')
    proc, elapsed = run_job(tmp_path, source, nproc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s:\n{out}"
    assert f"[rank 1] Unhandled ValueError before init_process_group on rank 1/{nproc}" in out
    assert "[rank 1] ValueError: no data for this rank" in out
    assert "unreachable" not in out


@pytest.mark.parametrize("nproc", [2, 3])
def test_exit_before_init_ends_the_job_naming_the_rank(tmp_path, nproc):
    proc, elapsed = run_job(tmp_path, BEFORE_INIT.format(fail="sys.exit(4)"), nproc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s:\n{out}"
    assert "rank 1 left the job (its script ended before init_process_group: the end of the " \
           "script or sys.exit) before it issued any collective" in out, out
    assert "unreachable" not in out


def test_every_rank_exiting_before_init_is_a_normal_end(tmp_path):
    # e.g. `--help` on every rank: each rank's exit hook meets the others and MPI finalizes
    proc, _ = run_job(tmp_path, "import sys\nimport ddp\nprint('help')\nsys.exit(0)\n", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("help") == 2


HARD_EXIT = """
import os
import signal
import sys
import time
import numpy as np
import ddp.distributed as dist
dist.init_process_group()
pg = dist.get_default_group()
pg.allreduce(np.ones(3))
if dist.get_rank() == 1:
    time.sleep(0.5)  # in the middle of the job (ddprun registers ranks within 0.1 s)
    how = sys.argv[1]
    if how.startswith("os._exit"):
        os._exit(int(how[len("os._exit"):]))
    os.kill(os.getpid(), getattr(signal, how))
pg.allreduce(np.ones(3))
print("unreachable", flush=True)
"""


@pytest.mark.parametrize("nproc", [2, 3])
def test_os_exit_on_one_rank_ends_the_job_with_its_status(tmp_path, nproc):
    # os._exit skips every hook: mpiexec (Hydra) ends the job itself, silently, with the
    # rank's status; only ddprun can name the rank (next tests).
    proc, elapsed = run_job(tmp_path, HARD_EXIT, nproc, "os._exit3")
    assert proc.returncode in (3, 9), proc.stdout + proc.stderr  # 9: a rank mpiexec killed
    assert elapsed < BOUND_S
    assert "unreachable" not in proc.stdout


@pytest.mark.parametrize("nproc", [2, 3])
@pytest.mark.parametrize("how, status", [("os._exit3", 3), ("os._exit0", 1),
                                         ("SIGKILL", 9), ("SIGTERM", 15)])
def test_ddprun_names_a_rank_that_vanished(tmp_path, nproc, how, status):
    proc, elapsed = run_job(tmp_path, HARD_EXIT, nproc, how, launcher="ddprun")
    out = proc.stdout + proc.stderr
    # mpiexec's status is the rank's (os._exit(3): 3; a signal: its number), or that of a
    # rank it killed (9). os._exit(0): mpiexec says 0 although the others were killed
    # mid-job; ddprun says 1. Should mpiexec miss the death, ddprun ends the job: 137.
    ender = "ddprun" if "ddprun killed it" in out else "mpiexec"
    assert proc.returncode in ((status, 9) if ender == "mpiexec" else (137,)), out
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s:\n{out}"
    # The launcher sees ends through FIFOs, normally rank 1's alone before mpiexec kills the
    # others; if it woke only after several had ended it says so instead of guessing.
    others = [r for r in range(nproc) if r != 1]
    named = "ddprun: rank 1 (pid " in out and f"still ran; {ender} ended" in out
    together = re.search(r"ddprun: one of ranks \[[0-9, ]*1[0-9, ]*\] ended first", out)
    assert named or together, out
    assert "ended first without ddp saying why (os._exit, a signal, or a crash in native " \
           "code) while ranks " in out
    assert not named or f"while ranks {others} still ran" in out
    assert "unreachable" not in out


def test_ddprun_is_silent_when_ranks_report_themselves(tmp_path):
    source = "import ddp.distributed as dist\ndist.init_process_group()\n" \
             "if dist.get_rank() == 1:\n    raise KeyError('reported')\ndist.barrier()\n"
    proc, _ = run_job(tmp_path, source, 2, launcher="ddprun")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "[rank 1] KeyError: 'reported'" in out
    assert "ddprun:" not in out


STUCK = """
import time
import numpy as np
import ddp.distributed as dist
dist.init_process_group()
pg = dist.get_default_group()
pg.allreduce(np.ones(3))
if dist.get_rank() == 1:
    time.sleep(60)  # stuck in its own work
pg.allreduce(np.ones(3))
print("unreachable", flush=True)
"""


@pytest.mark.parametrize("nproc", [2, 3])
def test_watchdog_names_the_rank_that_is_behind(tmp_path, nproc):
    proc, elapsed = run_job(tmp_path, STUCK, nproc, env=mpi_env(DDP_TIMEOUT="3"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s:\n{out}"
    waiting = "rank 0 is" if nproc == 2 else "ranks 0, 2 are"
    assert (f"Where every rank is: {waiting} in #2 allreduce(float64, numel=3, op=SUM) of group "
            f"'WORLD' (in the check that every rank issued it) from job.py:10 in <module>") in out
    assert ("rank 1 is outside any collective, last in #1 allreduce(float64, numel=3, op=SUM) "
            "of group 'WORLD' from job.py:7 in <module> (") in out, out
    assert "Behind or elsewhere: rank 1." in out
    assert "past the timeout of 3 s" in out


def _hydra(mpiexec: str) -> bool:
    return "HYDRA" in subprocess.run([mpiexec, "--version"], capture_output=True,
                                     text=True).stdout.upper()


@pytest.mark.parametrize("nproc", [2, 3])
def test_ddprun_ends_the_job_when_mpiexec_does_not(tmp_path, nproc):
    # Hydra's -disable-auto-cleanup keeps the other ranks running after one died: they wait in
    # their collective for a peer that is gone, as if mpiexec had missed the death. ddprun
    # ends the job itself END_GRACE_S after it saw the rank vanish.
    from ddp.launcher import END_GRACE_S, find_mpiexec
    if not _hydra(find_mpiexec()):
        pytest.skip("needs MPICH's Hydra mpiexec (-disable-auto-cleanup)")
    proc, elapsed = run_job(tmp_path, HARD_EXIT, nproc, "os._exit3", launcher="ddprun",
                            launcher_args=("--mpi-arg=-disable-auto-cleanup",))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 128 + 9, out
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s:\n{out}"
    assert f"ddprun: mpiexec had not ended the job {END_GRACE_S:.0f} s after a rank failed; " \
           "ddprun killed it" in out, out
    assert "ddprun: rank 1 (pid " in out and "ddprun ended the job (status 137)" in out, out
    assert "unreachable" not in out
