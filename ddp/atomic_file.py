"""Atomic file replacement: write a temporary file beside the target, then rename it over.

The contract, for :func:`atomic_write`:

* A reader of the target sees the previous file or the complete new one, never a mix: the
  data goes to a temporary file in the same directory, which is flushed, fsync'ed and renamed
  over the target (``os.replace``, atomic on POSIX), and the directory is fsync'ed after.
* Any failure while writing (an exception in the caller's writer, ``ENOSPC``, ``EIO``, a
  write that makes no progress) removes the temporary file and leaves the previous target
  intact. An ``OSError`` is re-raised as an ``OSError`` of the same errno (so the same
  subclass) whose message names the errno's text ("No space left on device"), the target and
  the temporary file.
* A writer killed outright (SIGKILL, power loss) cannot clean up. Temporary files are named
  ``.ddp-tmp~<host>~<pid>~<random>~<target name>.tmp``, and every :func:`atomic_write` first
  removes the *stale* ones in its directory: those written on this host (same host name and
  pid namespace) by a process that no longer exists, and those of another host not modified
  for :data:`STALE_AFTER_S` seconds (a live writer modifies its file with every write; its
  pid cannot be checked from here). A live writer's file on this host is never removed,
  however long it takes; a reused pid only keeps a stale file until that process ends.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO

TMP_PREFIX = ".ddp-tmp~"
TMP_SUFFIX = ".tmp"
STALE_AFTER_S = 3600.0
_BUFFER = 1 << 20
_NAME_CHARS = 64  # of the target's name kept in a temporary name (names are limited to 255)

_UMASK = os.umask(0)
os.umask(_UMASK)

_write = os.write  # the one system call that writes file data (tests replace it)


def _host() -> str:
    """This host's name and pid namespace: containers that share a host name (host
    networking) and a directory see each other's pids as dead, so the namespace is part of it."""
    host = socket.gethostname().replace("~", "-").replace(os.sep, "-") or "localhost"
    try:
        return f"{host}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: the host name alone
        return host


class _CheckedFile(io.FileIO):
    """A raw file whose writes either write everything or raise.

    ``write`` loops over short writes (``os.write`` may write less than asked); a write that
    makes no progress at all is reported as ``ENOSPC``, which is what a full disk does when it
    does not raise by itself.
    """

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = _write(self.fileno(), view[done:])
            if not n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        return done


def atomic_write(path: str, write: Callable[[BinaryIO], None], what: str = "ddp.save") -> None:
    """Call ``write(fh)`` on a temporary file, then rename it over ``path``.

    Args:
        path: the target file; its directory must exist.
        write: writes the whole content to the binary file it is given.
        what: the caller's name, for error messages.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: the directory of ``path`` does not exist.
        OSError: writing failed (errno kept: ``ENOSPC``, ``EACCES`` ...); the message names
            the reason, ``path`` and the temporary file, which has been removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path!r} is a directory; pass a file path")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{what}: cannot write {path!r}: directory {directory!r} "
                                "does not exist")
    remove_stale_temporaries(directory)
    base = os.path.basename(path)[:_NAME_CHARS].replace("~", "-")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{_host()}~{os.getpid()}~",
                                   suffix=f"~{base}{TMP_SUFFIX}", dir=directory)
    except OSError as exc:  # e.g. a read-only directory: name the target, not the temp name
        raise OSError(exc.errno, f"{what} could not create a temporary file in {directory!r} "
                      f"to write {path!r}: {exc.strerror}") from exc
    try:
        with io.BufferedWriter(_CheckedFile(fd, "wb"), buffer_size=_BUFFER) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            message = (f"{what} could not write {path!r}: {reason} (while writing the "
                       f"temporary file {os.path.basename(tmp)!r}, now removed); any previous "
                       f"{os.path.basename(path)!r} is intact")
            raise (OSError(exc.errno, message) if exc.errno else OSError(message)) from exc
        raise
    _fsync_directory(directory)


def remove_stale_temporaries(directory: str, now: float | None = None) -> list[str]:
    """Remove the stale temporary files of interrupted writes in ``directory``.

    Stale means: named by :func:`atomic_write` and either written on this host by a process
    that no longer exists, or written on another host and not modified for
    :data:`STALE_AFTER_S` seconds. Removal is best effort (another process may race to remove
    the same file).

    Returns:
        The names of the files removed.
    """
    now = time.time() if now is None else now
    host = _host()
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(TMP_PREFIX) and entry.name.endswith(TMP_SUFFIX)):
            continue
        fields = entry.name[len(TMP_PREFIX):].split("~", 2)
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if len(fields) == 3 and fields[0] == host:
            stale = fields[1].isdigit() and not _pid_alive(int(fields[1]))
        else:
            stale = age > STALE_AFTER_S
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # it exists (another user's), or is no pid we can judge: keep the file
    return True


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["STALE_AFTER_S", "atomic_write", "remove_stale_temporaries"]
