"""What the ranks of a ``ddprun`` job tell their launcher: pids, and how each rank ended.

A rank that ends through ``os._exit``, a signal or a crash in native code says nothing, and
mpiexec then kills the others at once, so no rank can name it. ``ddprun`` can, if it knows
which process is which rank: it hands its ranks a directory (``DDP_RUN_DIR``), every rank
records ``rank<k>.pid`` there at ``init_process_group`` and a marker when it ends through ddp
(``done``: the exit protocol completed; ``abort``: ddp ended the job and said why), and the
launcher watches those pids (``ddp.launcher``). Outside ``ddprun`` nothing is written.

Files: ``rank<k>.pid`` holds ``"<pid> <hostname>"``; markers are empty ``rank<k>.<how>``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket

from ddp import config

ENDINGS = ("done", "abort")


def _path(rank: int, suffix: str) -> str | None:
    directory = config.get("DDP_RUN_DIR")
    return None if directory is None else os.path.join(directory, f"rank{rank}.{suffix}")


def _write(path: str | None, text: str) -> None:
    if path is None:
        return
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        pass  # another host without the launcher's directory: the launcher cannot watch it


def record_pid(rank: int) -> None:
    """Record this process as world rank ``rank`` (under ``ddprun`` only)."""
    _write(_path(rank, "pid"), f"{os.getpid()} {socket.gethostname()}")


def record_end(rank: int, how: str) -> None:
    """Record that rank ``rank`` ended through ddp: ``how`` is one of :data:`ENDINGS`."""
    if how not in ENDINGS:
        raise ValueError(f"record_end: how must be one of {ENDINGS}, got {how!r}")
    _write(_path(rank, how), "")


class RankWatcher:
    """The launcher's side: which rank process of this host ended first, and how.

    ``poll()`` reads the pid files as ranks write them and notes when each local rank process
    ends (through ``os.pidfd_open`` where Linux has it, so ends are seen in the order they
    happen; elsewhere by polling). Processes on other hosts are not watched.

    Args:
        directory: the run directory handed to the ranks as ``DDP_RUN_DIR``.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.pids: dict[int, int] = {}  # rank -> pid, this host's ranks (-1: another host's)
        self._starts: dict[int, str | None] = {}  # pid -> its start time, against pid reuse
        self.ended: list[list[int]] = []  # ranks seen ending, in batches seen together
        self._fds: dict[int, int] = {}  # pidfd -> rank
        self._host = socket.gethostname()

    def fds(self) -> list[int]:
        """The pidfds to wait on (readable once their process has ended)."""
        return list(self._fds)

    def poll(self, readable=()) -> None:
        """Pick up new pid files, and note the ranks whose processes ended.

        Args:
            readable: pidfds a ``select`` found readable (their processes ended, in that
                batch); without pidfds every watched pid is checked.
        """
        self._read_pid_files()
        batch = []
        for fd in readable:
            batch.append(self._fds.pop(fd))
            os.close(fd)
        if not hasattr(os, "pidfd_open"):
            seen = {r for b in self.ended for r in b}
            batch += [r for r, pid in self.pids.items()
                      if pid > 0 and r not in seen and not _alive(pid)]
        self._ended(batch)

    def _ended(self, ranks: list[int]) -> None:
        if ranks:
            self.ended.append(sorted(ranks))

    def _read_pid_files(self) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if not (name.startswith("rank") and name.endswith(".pid")):
                continue
            rank = int(name[4:-4])
            if rank in self.pids:
                continue
            try:
                with open(os.path.join(self.directory, name)) as f:
                    pid_text, host = f.read().split()
            except (OSError, ValueError):
                continue  # being written; read it next time
            if host != self._host:
                self.pids[rank] = -1
                continue
            pid = self.pids[rank] = int(pid_text)
            self._starts[pid] = start_time(pid)
            if hasattr(os, "pidfd_open"):
                try:
                    self._fds[os.pidfd_open(pid)] = rank
                except OSError:
                    self._ended([rank])  # already gone

    def marked(self, rank: int, how: str) -> bool:
        """Whether rank ``rank`` recorded the ending ``how`` (see :func:`record_end`)."""
        return os.path.exists(os.path.join(self.directory, f"rank{rank}.{how}"))

    def unexplained_end(self) -> list[int]:
        """The rank(s) that ended first without ddp saying why, while other ranks still ran.

        Usually one rank; several when their ends were seen together (the order is then
        unknown). Empty when some rank aborted the job itself (it printed why), when the first
        ranks to end had completed the exit protocol, or when no local rank was seen ending.
        """
        local = [r for r, pid in self.pids.items() if pid > 0]
        if (not self.ended or len(local) < 2 or len(self.ended[0]) == len(local)
                or any(self.marked(r, "abort") for r in self.pids)):
            return []
        return [r for r in self.ended[0] if not self.marked(r, "done")]

    def alive(self) -> dict[int, str | None]:
        """This host's rank processes still running: pid -> start time (see :func:`kill`)."""
        return {pid: self._starts.get(pid) for pid in self.pids.values()
                if pid > 0 and _alive(pid)}

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended, even before its parent reaps it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill(processes: dict[int, str | None]) -> None:
    """SIGKILL each ``pid -> start time`` still running as that same process (not a new process
    that reused the pid; a process whose start time is unknown is left alone)."""
    for pid, start in processes.items():
        if start is None or start_time(pid) != start:
            continue  # gone, or unknown: never risk another process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
