"""Files of a checkpoint: versioned directories, an atomic ``latest`` pointer, raw ``.npy`` I/O.

Layout of a checkpoint root::

    root/latest            "v000002" (replaced atomically with os.replace)
    root/v000001/          a complete older checkpoint (kept until pruned)
    root/v000002/          index.json + one .npy per (flat space, rank) + model/<name>.npy
    root/v000003.tmp-<id>/ a save in progress; becomes v000003 only once every rank wrote

Readers follow ``latest``, which names a directory only after it is complete, so a save that
fails or is killed midway leaves the previous checkpoint loadable. Arrays are ``.npy`` files
written and read with ``allow_pickle=False``; reads memory-map the file so that a rank touches
only the byte range it asks for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid

import numpy as np

from ddp.backend import get_array_module

LATEST = "latest"
INDEX = "index.json"
_VERSION = re.compile(r"^v(\d{6})$")


def to_host(array) -> np.ndarray:
    xp = get_array_module(array)
    return np.ascontiguousarray(array if xp is np else xp.asnumpy(array))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_array(path: str, array) -> None:
    """Write ``array`` as a ``.npy`` file (no pickle) and flush it to disk."""
    with open(path, "wb") as f:
        np.save(f, to_host(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def versions(root: str) -> list[int]:
    """Version numbers of the complete checkpoint directories under ``root``, ascending."""
    if not os.path.isdir(root):
        return []
    found = (_VERSION.match(name) for name in os.listdir(root))
    return sorted(int(m.group(1)) for m in found if m)


def latest_dir(root: str) -> str:
    """The directory ``root/latest`` points to, or ``root`` itself if it holds an index.

    Raises:
        FileNotFoundError: ``root`` holds no checkpoint.
    """
    if os.path.isfile(os.path.join(root, INDEX)):
        return root
    pointer = os.path.join(root, LATEST)
    if not os.path.isfile(pointer):
        raise FileNotFoundError(f"no checkpoint in {root!r}: {pointer!r} does not exist")
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(root, name)
    if not os.path.isfile(os.path.join(path, INDEX)):
        raise FileNotFoundError(f"checkpoint {path!r} named by {pointer!r} has no {INDEX}")
    return path


def begin(root: str) -> tuple[str, str]:
    """Create the temporary directory of the next version; returns ``(tmp_dir, final_dir)``."""
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):  # leftovers of saves that died
        if ".tmp-" in name and _VERSION.match(name.split(".tmp-")[0]):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    number = (versions(root) or [0])[-1] + 1
    final = os.path.join(root, f"v{number:06d}")
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(os.path.join(tmp, "model"))
    return tmp, final


def commit(root: str, tmp: str, final: str, keep_last: int) -> None:
    """Publish ``tmp`` as ``final``, point ``latest`` at it, prune all but ``keep_last``."""
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer_tmp = os.path.join(root, f"{LATEST}.tmp-{uuid.uuid4().hex[:8]}")
    with open(pointer_tmp, "w") as f:
        f.write(os.path.basename(final) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, os.path.join(root, LATEST))
    _fsync_dir(root)
    if keep_last > 0:
        for number in versions(root)[:-keep_last]:
            shutil.rmtree(os.path.join(root, f"v{number:06d}"), ignore_errors=True)


def abort(tmp: str) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


class Reader:
    """Reads element ranges of the flat spaces of one checkpoint directory."""

    def __init__(self, path: str, index: dict):
        self.path = path
        self.index = index
        self._maps: dict[str, np.ndarray] = {}

    def _map(self, name: str) -> np.ndarray:
        m = self._maps.get(name)
        if m is None:
            m = _load_npy(os.path.join(self.path, name), mmap_mode="r")
            self._maps[name] = m
        return m

    def read(self, space: str, lo: int, hi: int) -> np.ndarray:
        """Elements ``[lo, hi)`` of flat space ``space``; zeros past its end (padding).

        Raises:
            KeyError: the checkpoint has no such space.
            ValueError: part of the range is in no file.
        """
        info = self.index["spaces"][space]
        out = np.zeros(max(0, hi - lo), dtype=np.dtype(info["dtype"]))
        covered = max(0, hi - max(lo, info["numel"]))  # padding past the real end
        for f in info["files"]:
            a, b = max(lo, f["start"]), min(hi, f["stop"])
            if a < b:
                base = f.get("offset", 0) - f["start"]  # where element ``start`` is in the file
                out[a - lo:b - lo] = self._map(f["file"])[base + a:base + b]
                covered += b - a
        if covered != hi - lo:
            raise ValueError(
                f"checkpoint {self.path!r}: elements [{lo}, {hi}) of {space!r} are not all in "
                f"its files {[(f['file'], f['start'], f['stop']) for f in info['files']]}"
            )
        return out

    def read_file(self, name: str) -> np.ndarray:
        return _load_npy(os.path.join(self.path, name))


def _load_npy(path: str, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` that names the file when it is missing, truncated or not an ``.npy``."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {path!r} is missing") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"checkpoint file {path!r} is truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from exc
