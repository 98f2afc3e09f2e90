"""What the ranks of a ``ddprun`` job tell their launcher: who they are, and how they ended.

A rank that ends through ``os._exit``, a signal or a crash in native code says nothing, and
mpiexec then kills the others at once, so no rank can name it. ``ddprun`` can: it hands its
ranks a directory (``DDP_RUN_DIR``); at ``init_process_group`` every rank creates a FIFO
``rank<k>.alive`` there and holds it open for the rest of its life (never writing to it), then
records ``rank<k>.pid``; when it ends through ddp it leaves a marker (``done``: the exit
protocol completed; ``abort``: ddp ended the job and said why). The launcher holds the FIFOs'
read ends (:class:`RankWatcher`): the kernel closes a process's files first thing when it
dies, before mpiexec can notice and kill the others, so the FIFO that reports end-of-file
first is the rank that ended first. Outside ``ddprun`` nothing is written.

``rank<k>.pid`` holds ``"<pid> <hostname>"``; markers are empty ``rank<k>.<how>`` files.
Ranks on other hosts than the launcher's are not watched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket

from ddp import config

ENDINGS = ("done", "abort")
_alive_fd: list[int] = []  # this rank's end of its FIFO, held open until the process dies


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


def _close_in_child() -> None:
    # A forked child (a data-loader worker) must not keep its parent's FIFO open: the
    # launcher would not see the rank end.
    while _alive_fd:
        with contextlib.suppress(OSError):
            os.close(_alive_fd.pop())


def record_pid(rank: int) -> None:
    """Hold this rank's FIFO open and record its pid (under ``ddprun`` only; once)."""
    path = _path(rank, "alive")
    if path is None or _alive_fd:
        return
    try:
        os.mkfifo(path)
        # Read-write: the open never waits for a reader, and this process counts as a writer.
        _alive_fd.append(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:
        return  # another host, or no FIFOs here: the launcher cannot watch this rank
    os.register_at_fork(after_in_child=_close_in_child)
    _write(_path(rank, "pid"), f"{os.getpid()} {socket.gethostname()}")


def record_end(rank: int, how: str) -> None:
    """Record that rank ``rank`` ended through ddp: ``how`` is one of :data:`ENDINGS`."""
    if how not in ENDINGS:
        raise ValueError(f"record_end: how must be one of {ENDINGS}, got {how!r}")
    _write(_path(rank, how), "")


class RankWatcher:
    """The launcher's side: which rank process of this host ended first.

    Args:
        directory: the run directory handed to the ranks as ``DDP_RUN_DIR``.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.pids: dict[int, int] = {}  # rank -> pid, this host's ranks (-1: another host's)
        self._starts: dict[int, str | None] = {}  # pid -> its start time, against pid reuse
        self.ended: list[list[int]] = []  # ranks seen ending, in batches seen together
        self._fds: dict[int, int] = {}  # FIFO read end -> rank
        self._host = socket.gethostname()

    def fds(self) -> list[int]:
        """The FIFO read ends to wait on (readable at end-of-file: their process ended)."""
        return list(self._fds)

    def poll(self, readable=()) -> None:
        """Pick up ranks that registered, and note those whose processes ended.

        Args:
            readable: fds of :meth:`fds` that a ``select`` found readable, in one batch.
        """
        # Newly registered ranks count too: Linux never reports end-of-file for a FIFO whose
        # writer was gone before the reader opened it, so each is read once right away.
        candidates = list(readable) + self._read_pid_files()
        batch = []
        for fd in candidates:
            try:
                if os.read(fd, 1):
                    continue  # nobody writes; ignore
            except BlockingIOError:
                continue  # the rank still holds its end
            batch.append(self._fds.pop(fd))
            os.close(fd)
        if batch:
            self.ended.append(sorted(batch))

    def _read_pid_files(self) -> list[int]:
        """Register the ranks that recorded themselves since; returns their new FIFO fds."""
        new: list[int] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return new
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
            try:
                fd = os.open(os.path.join(self.directory, f"rank{rank}.alive"),
                             os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            self._fds[fd] = rank
            new.append(fd)
        return new

    def marked(self, rank: int, how: str) -> bool:
        """Whether rank ``rank`` recorded the ending ``how`` (see :func:`record_end`)."""
        return os.path.exists(os.path.join(self.directory, f"rank{rank}.{how}"))

    def unexplained_end(self) -> list[int]:
        """The rank(s) that ended first without ddp saying why, while other ranks still ran.

        Usually one rank; several when their ends were seen together (the order is then
        unknown: e.g. a rank that died before the launcher had registered it, within about
        0.1 s of init). Empty when some rank aborted the job itself (it printed why), when the
        first ranks to end had completed the exit protocol, or when no local rank was seen
        ending.
        """
        local = [r for r, pid in self.pids.items() if pid > 0]
        if (not self.ended or len(local) < 2
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
