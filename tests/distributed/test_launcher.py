"""``ddprun``: MPI mode, threads mode, exit codes and the mpiexec command it builds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from ddp import launcher

TINY = """
import sys
import ddp.distributed as dist
dist.init_process_group()
print(f"rank {dist.get_rank()} of {dist.get_world_size()} args={sys.argv[1:]}", flush=True)
code = int(sys.argv[1]) if len(sys.argv) > 1 and dist.get_rank() == 1 else 0
dist.destroy_process_group()
sys.exit(code)
"""


def _ranks(stdout: str) -> list[str]:
    # Ranks print concurrently (threads may even interleave within a line): match, then sort.
    return sorted(re.findall(r"rank \d+ of \d+ args=\[[^\]]*\]", stdout))


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _ddprun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return _ddprun_with_args(tmp_path, list(args), [])


def _ddprun_with_args(tmp_path, launcher_args, script_args) -> subprocess.CompletedProcess:
    script = tmp_path / "tiny.py"
    script.write_text(TINY)
    cmd = [sys.executable, "-m", "ddp.launcher", *launcher_args, str(script), *script_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env())


def test_mpi_mode_runs_two_ranks_and_propagates_exit_code(tmp_path):
    try:
        launcher.find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    proc = _ddprun_with_args(tmp_path, ["-n", "2"], ["3"])  # rank 1 exits with status 3
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert _ranks(proc.stdout) == ["rank 0 of 2 args=['3']", "rank 1 of 2 args=['3']"]


def test_threads_mode_runs_ranks_in_one_process(tmp_path):
    proc = _ddprun(tmp_path, "-n", "3", "--threads")
    assert proc.returncode == 0, proc.stderr
    assert _ranks(proc.stdout) == [f"rank {r} of 3 args=[]" for r in range(3)]


def test_threads_mode_reports_failing_rank(tmp_path):
    proc = _ddprun_with_args(tmp_path, ["-n", "2", "--threads"], ["4"])
    assert proc.returncode == 4
    assert "rank 1 of 2 raised SystemExit" in proc.stderr


def test_command_line_with_hostfile_and_extra_args(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost:2\n")
    args = launcher.parse_args(["-n", "4", "--hostfile", str(hostfile), "--mpi-arg=-ppn 2",
                                "--mpiexec", "/opt/mpi/bin/mpiexec", "train.py", "--lr", "0.1"])
    cmd = launcher.build_mpi_command(args)
    assert cmd[:3] == ["/opt/mpi/bin/mpiexec", "-n", "4"]
    assert cmd[3:5] == ["--hostfile", str(hostfile)]  # not Hydra: Open MPI's spelling
    assert cmd[5:] == ["-ppn", "2", sys.executable, "train.py", "--lr", "0.1"]


def test_hostfile_flag_for_hydra(tmp_path):
    try:
        mpiexec = launcher.find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    expect = "-f" if "HYDRA" in version.upper() else "--hostfile"
    assert launcher._hostfile_flag(mpiexec) == expect


def test_missing_mpiexec_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install mpich"):
        launcher.find_mpiexec()


def test_missing_hostfile_is_an_error(tmp_path):
    args = launcher.parse_args(["-n", "2", "--hostfile", str(tmp_path / "nope"),
                                "--mpiexec", "mpiexec", "x.py"])
    with pytest.raises(FileNotFoundError, match="hostfile"):
        launcher.build_mpi_command(args)


SLEEPER = """
import time
import ddp.distributed as dist
dist.init_process_group()
print(f"rank {dist.get_rank()} sleeping", flush=True)
time.sleep(120)
"""


def _marked_processes(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return found.split()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_ddprun_stops_every_rank(tmp_path, sig):
    try:
        launcher.find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    marker = f"sleeper_{uuid.uuid4().hex[:12]}"  # in every command line of this job only
    script = tmp_path / f"{marker}.py"
    script.write_text(SLEEPER)
    proc = subprocess.Popen([sys.executable, "-m", "ddp.launcher", "-n", "2", str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env())
    try:
        seen = ""
        while len(re.findall(r"rank \d sleeping", seen)) < 2:  # both ranks are up
            line = proc.stdout.readline()
            assert line, seen
            seen += line
        ranks = _marked_processes(marker)
        assert len(ranks) >= 3, ranks  # mpiexec and two ranks (and Hydra's proxy)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _marked_processes(marker) == [], "processes outlived ddprun"
        assert code != 0
    finally:
        proc.kill()
        for pid in _marked_processes(marker):
            os.kill(int(pid), signal.SIGKILL)
