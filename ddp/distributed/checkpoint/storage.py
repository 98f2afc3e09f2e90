"""The directories of a checkpoint root: versions, the atomic ``latest`` pointer, cleanup.

Layout of a checkpoint root::

    root/latest            "v000002\\n" (replaced atomically with os.replace)
    root/v000001/          a complete older checkpoint (kept until pruned)
    root/v000002/          index.json + one .npy per (flat space, rank) + model/<name>.npy
    root/v000003.tmp-<id>/ a save in progress; becomes v000003 only once every rank wrote

Readers follow ``latest``, which names a directory only after it is complete, so a save that
fails or is killed midway leaves the previous checkpoint loadable. ``latest`` must hold a plain
version name (``v`` and six digits) whose directory is a real directory directly under the
root (not a symlink). A commit that fails removes what it made (the renamed version, the
pointer's temporary file); the next save removes what a killed save left (``*.tmp-*`` entries
and versions newer than ``latest``).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

from ddp.distributed.checkpoint import files

# Writes go through this name, so that a test can wrap it to inject a failure.
write_array = files.write_array

LATEST = "latest"
INDEX = "index.json"
_VERSION = re.compile(r"v(\d{6})")
_POINTER = re.compile(r"(v\d{6})\n?")
_LEFTOVER = re.compile(r"(v\d{6}|latest)\.tmp-[0-9a-f]{8}")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def versions(root: str) -> list[int]:
    """Version numbers of the complete checkpoint directories under ``root``, ascending."""
    if not os.path.isdir(root):
        return []
    found = (_VERSION.fullmatch(name) for name in os.listdir(root))
    return sorted(int(m.group(1)) for m in found if m)


def _pointed(root: str) -> str | None:
    """The version name in ``root/latest`` (validated), or None when there is no pointer."""
    pointer = os.path.join(root, LATEST)
    if not os.path.lexists(pointer):
        return None
    data = files.read_bytes(pointer, 64)
    match = _POINTER.fullmatch(data.decode("ascii", errors="replace"))
    if not match:
        raise ValueError(f"checkpoint pointer {pointer!r} is corrupt: it holds {data[:64]!r}, "
                         "expected a version name like 'v000001'")
    return match.group(1)


def latest_dir(root: str) -> str:
    """The directory ``root/latest`` points to, or ``root`` itself if it holds an index.

    Raises:
        FileNotFoundError: ``root`` holds no checkpoint, or ``latest`` names a missing one.
        ValueError: ``latest`` is corrupt or names something outside the root.
    """
    root = os.fspath(root)
    if os.path.isfile(os.path.join(root, INDEX)):
        return root
    name = _pointed(root)
    if name is None:
        raise FileNotFoundError(f"no checkpoint in {root!r} (no {LATEST!r})")
    path = os.path.join(root, name)
    real = os.path.realpath(path)
    if os.path.islink(path) or os.path.dirname(real) != os.path.realpath(root):
        raise ValueError(f"checkpoint {path!r} named by {os.path.join(root, LATEST)!r} "
                         f"resolves to {real!r}, outside the root (symlinks are refused)")
    if not os.path.isfile(os.path.join(path, INDEX)):
        raise FileNotFoundError(f"checkpoint {path!r} named by {os.path.join(root, LATEST)!r} "
                                f"has no {INDEX}")
    return path


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def begin(root: str) -> tuple[str, str]:
    """Clean up after killed saves, create the temporary directory of the next version.

    Returns:
        ``(tmp_dir, final_dir)``.
    """
    try:
        os.makedirs(root, exist_ok=True)
        try:
            current = _pointed(root)
        except ValueError:  # a corrupt pointer: this save replaces it; keep every version
            current = None
        for name in os.listdir(root):
            if _LEFTOVER.fullmatch(name):
                _remove(os.path.join(root, name))
        if current is not None:  # renamed but never pointed at: a commit that died midway
            for number in versions(root):
                if number > int(current[1:]):
                    _remove(os.path.join(root, f"v{number:06d}"))
        number = (versions(root) or [0])[-1] + 1
        final = os.path.join(root, f"v{number:06d}")
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(os.path.join(tmp, "model"))
    except OSError as exc:
        files.raise_os_error(exc, root)
    return tmp, final


def commit(root: str, tmp: str, final: str, keep_last: int) -> None:
    """Publish ``tmp`` as ``final``, point ``latest`` at it, prune all but ``keep_last``.

    All or nothing: when it raises, ``latest`` still names the previous version and neither
    ``final`` nor a temporary pointer file is left.
    """
    pointer_tmp = os.path.join(root, f"{LATEST}.tmp-{uuid.uuid4().hex[:8]}")
    renamed = False
    try:
        _fsync_dir(tmp)
        os.rename(tmp, final)
        renamed = True
        _fsync_dir(root)
        files.write_bytes(pointer_tmp, (os.path.basename(final) + "\n").encode())
        os.replace(pointer_tmp, os.path.join(root, LATEST))
    except BaseException:
        _remove(pointer_tmp)
        _remove(final if renamed else tmp)
        raise
    # Committed: the pointer names ``final``. What follows only saves space or flushes the
    # directory entry, so a failure must not undo the commit.
    try:
        _fsync_dir(root)
    except OSError:
        pass
    if keep_last > 0:
        for number in versions(root)[:-keep_last]:
            shutil.rmtree(os.path.join(root, f"v{number:06d}"), ignore_errors=True)


def abort(tmp: str | None) -> None:
    """Remove the temporary directory of a failed save (nothing when None)."""
    if tmp is not None:
        _remove(tmp)
