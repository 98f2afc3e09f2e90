"""``ddp.save`` / ``ddp.load``: checkpoints that never execute code when they are read.

A file is a zip archive (entries stored uncompressed) holding ``manifest.json``, which
describes the saved structure, and one ``.npy`` entry per array, read back with
``allow_pickle=False``. Nothing is unpickled, ever: a pickle (what ``torch.save`` or
``pickle.dump`` write) is refused with an error instead of being run.

What can be saved: nested dicts (any key type below, insertion order and ``OrderedDict``
kept), lists, tuples, ``ddp.Size``, Tensors and Parameters (dtype, device, ``requires_grad``
kept; a tensor that appears twice comes back as one object), NumPy arrays and scalars, Python
numbers (``nan``/``inf`` included), strings, bytes, bools, None, ``ddp.dtype`` and
``ddp.device``. That covers ``model.state_dict()``, ``optimizer.state_dict()`` (integer keys
included) and scheduler state dicts. Loaded tensors are leaves: the autograd graph is not saved.

Writes to a path are atomic: the archive goes to a temporary file in the same directory,
which is flushed, fsync'ed and then renamed over the target, so a crash or an exception in the
middle of ``save`` leaves any previous file intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from ddp import backend, dtypes
from ddp.device import as_device, device, move_array
from ddp.nn.parameter import Parameter
from ddp.tensor import Size, Tensor

FORMAT = "ddp.save"
VERSION = 1
MANIFEST = "manifest.json"
_PICKLE_PROTO = b"\x80"  # first byte of a pickle of protocol >= 2
_ZIP_MAGIC = b"PK\x03\x04"

_UMASK = os.umask(0)
os.umask(_UMASK)

FileLike = str | os.PathLike | BinaryIO


# ------------------------------------------------------------------------------------- save
def save(obj: Any, f: FileLike) -> None:
    """Write ``obj`` to ``f`` (a path, written atomically, or a binary file object).

    Raises:
        TypeError: ``obj`` holds a value of a type that cannot be saved; the message names
            where it is (``obj['state'][0]['exp_avg']``) and the type.
        ValueError: ``obj`` contains itself.
    """
    encoder = _Encoder()
    manifest = {"format": FORMAT, "version": VERSION, "root": encoder.encode(obj, "obj")}
    if not isinstance(f, (str, os.PathLike)):
        _write_archive(f, manifest, encoder.arrays)
        return
    path = os.fspath(f)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"ddp.save: {path!r} is a directory; pass a file path")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"ddp.save: cannot write {path!r}: directory {directory!r} "
                                "does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_archive(fh, manifest, encoder.arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _write_archive(fh: BinaryIO, manifest: dict, arrays: list[tuple[str, np.ndarray]]) -> None:
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays:
            _write_array(zf, name, array)
        zf.writestr(MANIFEST, json.dumps(manifest, allow_nan=False))


def _write_array(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(name, "w", force_zip64=True) as entry:
        np.lib.format.write_array(entry, array, allow_pickle=False)


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


class _Encoder:
    """Turns an object tree into JSON, collecting arrays as numbered ``.npy`` entries."""

    def __init__(self) -> None:
        self.arrays: list[tuple[str, np.ndarray]] = []
        self._tensors: dict[int, str] = {}  # id(tensor) -> entry, so shared tensors stay shared
        self._keep: list[Any] = []  # keeps ids in _tensors valid while encoding
        self._open: set[int] = set()  # containers being encoded, to catch cycles

    def _add_array(self, array: np.ndarray, where: str) -> str:
        if array.dtype.hasobject or array.dtype.kind not in "biufc":
            raise TypeError(f"ddp.save cannot store a NumPy array of dtype {array.dtype} "
                            f"(at {where})")
        name = f"data/{len(self.arrays)}.npy"
        self.arrays.append((name, array))
        return name

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, np.generic):  # before int/float: np.float64 subclasses float
            return {"$": "npscalar", "data": self._add_array(np.asarray(obj), where)}
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {"$": "float", "v": repr(float(obj))}
        if isinstance(obj, Tensor):
            return self._encode_tensor(obj, where)
        if isinstance(obj, np.ndarray):
            return {"$": "ndarray", "data": self._add_array(obj, where)}
        if isinstance(obj, dtypes.dtype):
            return {"$": "dtype", "v": obj.name}
        if isinstance(obj, device):
            return {"$": "device", "v": str(obj)}
        if isinstance(obj, bytes):
            return {"$": "bytes", "v": obj.hex()}
        if isinstance(obj, (list, tuple, dict)):
            if id(obj) in self._open:
                raise ValueError(f"ddp.save cannot store an object that contains itself "
                                 f"(at {where})")
            self._open.add(id(obj))
            try:
                return self._encode_container(obj, where)
            finally:
                self._open.discard(id(obj))
        raise TypeError(
            f"ddp.save cannot store an object of type {type(obj).__module__}."
            f"{type(obj).__qualname__} (at {where}); it stores tensors, NumPy arrays, numbers, "
            f"strings, bytes, None and dicts/lists/tuples of them"
        )

    def _encode_container(self, obj: list | tuple | dict, where: str) -> Any:
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            tag = "size" if isinstance(obj, Size) else "tuple"
            return {"$": tag, "items": [self.encode(v, f"{where}[{i}]")
                                        for i, v in enumerate(obj)]}
        items = [[self.encode(k, f"{where} key {k!r}"), self.encode(v, f"{where}[{k!r}]")]
                 for k, v in obj.items()]
        return {"$": "dict", "ordered": isinstance(obj, OrderedDict), "items": items}

    def _encode_tensor(self, t: Tensor, where: str) -> dict:
        name = self._tensors.get(id(t))
        if name is None:
            name = self._add_array(backend.to_numpy(t.array), where)
            self._tensors[id(t)] = name
            self._keep.append(t)
        return {"$": "tensor", "data": name, "device": str(t.device),
                "requires_grad": bool(t.requires_grad), "parameter": _is_parameter(t)}


def _is_parameter(t: Tensor) -> bool:
    return any(cls.__name__ == "Parameter" and cls.__module__.startswith("ddp.nn")
               for cls in type(t).__mro__)


# ------------------------------------------------------------------------------------- load
MapLocation = (str | device | dict[str, str] | Callable[[Tensor, str], Tensor] | None)


def load(f: FileLike, map_location: MapLocation = None, weights_only: bool = True) -> Any:
    """Read an object written by :func:`save`.

    Args:
        f: a path or a readable binary file object.
        map_location: where tensors go: None (where they were saved), a device or its name
            (all of them there), a dict mapping saved device names to new ones
            (``{"cuda:0": "cpu"}``), or a callable ``fn(tensor_on_cpu, saved_device_name)``
            returning the tensor to use.
        weights_only: accepted for torch compatibility. ddp files hold data only, so loading
            is always "weights only", whatever the value.

    Raises:
        RuntimeError: the file is a pickle (refused, never executed), is not a ddp archive, or
            is truncated or corrupt; the message names the file.
        FileNotFoundError: no file at ``f``.
    """
    name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as fh:
            return _load(fh, name, map_location)
    return _load(f, name, map_location)


def _load(fh: BinaryIO, name: str, map_location: MapLocation) -> Any:
    start = fh.tell() if fh.seekable() else 0
    head = fh.read(4)
    fh.seek(start)
    if head[:1] == _PICKLE_PROTO or (head and head[:4] != _ZIP_MAGIC and _looks_pickled(head)):
        raise RuntimeError(
            f"ddp.load: {name} holds a Python pickle (as written by pickle.dump or an old "
            f"torch.save). ddp.load never unpickles, since unpickling can run arbitrary code; "
            f"re-save the data with ddp.save."
        )
    if head[:4] != _ZIP_MAGIC:
        raise RuntimeError(f"ddp.load: {name} is not a ddp.save file (no zip header; "
                           f"{'empty file' if not head else f'starts with {head!r}'})")
    try:
        with zipfile.ZipFile(fh) as zf:
            names = set(zf.namelist())
            if MANIFEST not in names:
                if any(n.endswith("data.pkl") for n in names):
                    raise RuntimeError(
                        f"ddp.load: {name} was written by torch.save: its structure is a pickle "
                        f"(data.pkl), which ddp.load refuses to execute; load it with torch and "
                        f"re-save it with ddp.save."
                    )
                raise RuntimeError(f"ddp.load: {name} is a zip archive without {MANIFEST}; "
                                   f"it was not written by ddp.save")
            manifest = json.loads(zf.read(MANIFEST))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise RuntimeError(f"ddp.load: {name} has a manifest of unknown format")
            if manifest.get("version") != VERSION:
                raise RuntimeError(f"ddp.load: {name} has format version "
                                   f"{manifest.get('version')}, this ddp reads {VERSION}")
            return _Decoder(zf, name, map_location).decode(manifest["root"])
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError) as exc:
        raise RuntimeError(
            f"ddp.load: {name} is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def _looks_pickled(head: bytes) -> bool:
    """Protocol 0/1 pickles start with an opcode such as ``(``, ``]``, ``}`` or ``c``."""
    return head[:1] in (b"(", b"]", b"}", b"c", b"N", b"I", b"S", b"V")


class _Decoder:
    def __init__(self, zf: zipfile.ZipFile, name: str, map_location: MapLocation) -> None:
        self.zf = zf
        self.name = name
        self.map_location = map_location
        self._tensors: dict[str, Tensor] = {}

    def _array(self, entry: str) -> np.ndarray:
        with self.zf.open(entry) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            raise ValueError(f"unexpected manifest node of type {type(node).__name__}")
        tag = node["$"]
        if tag == "dict":
            pairs = [(self._key(k), self.decode(v)) for k, v in node["items"]]
            return OrderedDict(pairs) if node["ordered"] else dict(pairs)
        if tag == "tuple":
            return tuple(self.decode(v) for v in node["items"])
        if tag == "size":
            return Size(self.decode(v) for v in node["items"])
        if tag == "tensor":
            return self._tensor(node)
        if tag == "ndarray":
            return self._array(node["data"])
        if tag == "npscalar":
            return self._array(node["data"])[()]
        if tag == "float":
            return float(node["v"])
        if tag == "dtype":
            return dtypes.get_dtype(node["v"])
        if tag == "device":
            return device(node["v"])
        if tag == "bytes":
            return bytes.fromhex(node["v"])
        raise ValueError(f"unknown manifest tag {tag!r}")

    def _key(self, node: Any) -> Any:
        key = self.decode(node)
        return tuple(key) if isinstance(key, list) else key

    def _tensor(self, node: dict) -> Tensor:
        entry = node["data"]
        if entry in self._tensors:
            return self._tensors[entry]
        array = self._array(entry)
        saved = node["device"]
        if callable(self.map_location):
            t = self.map_location(Tensor(array), saved)
            if not isinstance(t, Tensor):
                raise TypeError(f"map_location returned {type(t).__name__}, expected a Tensor")
            array = t.array
        else:
            array = move_array(array, self._target(saved))
        if node["parameter"]:
            t = Parameter(array, requires_grad=node["requires_grad"])
        else:
            t = Tensor(array, requires_grad=node["requires_grad"])
        self._tensors[entry] = t
        return t

    def _target(self, saved: str) -> device:
        loc = self.map_location
        if isinstance(loc, dict):
            loc = loc.get(saved, saved)
        target = as_device(saved if loc is None else loc)
        if target.type == "cuda" and backend.cupy_module() is None:
            raise RuntimeError(
                f"ddp.load: {self.name} holds a tensor saved on {saved}, but CUDA is not "
                f"available ({backend.cupy_unavailable_reason()}); pass map_location='cpu'"
            )
        return target


__all__ = ["load", "save"]
