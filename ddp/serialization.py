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

Arrays are stored with one of the dtypes in :data:`ARRAY_DTYPES` (bool, signed and unsigned
integers of 8 to 64 bits, float16/32/64, complex64/128; bfloat16 as its uint16 bits, the
manifest node tagged ``"bits_of": "bfloat16"``); tensors only with a ddp dtype.

Writes to a path are atomic: the archive goes to a temporary file in the same directory,
which is flushed, fsync'ed and then renamed over the target, so a crash or an exception in the
middle of ``save`` leaves any previous file intact (``ddp/atomic_file.py``).

Files are untrusted input to ``load``: it reads only what ``save`` writes (stored, never
compressed members; ``.npy`` version 1.0/2.0 headers; the dtypes above), every allocation is
bounded by the bytes actually stored for it (a header that claims more raises before anything
is allocated), and each array member is read at most once, so loading never needs more memory
than the file's size plus the objects it describes.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from ddp import backend, dtypes
from ddp.atomic_file import atomic_write
from ddp.device import as_device, device, move_array
from ddp.nn.parameter import Parameter
from ddp.tensor import Size, Tensor

FORMAT = "ddp.save"
VERSION = 1
MANIFEST = "manifest.json"
_PICKLE_PROTO = b"\x80"  # first byte of a pickle of protocol >= 2
_ZIP_MAGIC = b"PK\x03\x04"

_NPY_VERSIONS = {(1, 0): np.lib.format.read_array_header_1_0,
                 (2, 0): np.lib.format.read_array_header_2_0}

ARRAY_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128))
"""The element types ``save`` stores and ``load`` accepts (either byte order for arrays)."""

FileLike = str | os.PathLike | BinaryIO


# ------------------------------------------------------------------------------------- save
def save(obj: Any, f: FileLike) -> None:
    """Write ``obj`` to ``f`` (a path, written atomically, or a binary file object).

    A path is written through :func:`ddp.atomic_file.atomic_write`: a temporary file beside
    it, renamed over it when complete; the stale temporary files of earlier interrupted saves
    in that directory are removed first (the rule is in ``ddp/atomic_file.py``).

    Raises:
        TypeError: ``obj`` holds a value of a type that cannot be saved; the message names
            where it is (``obj['state'][0]['exp_avg']``) and the type.
        ValueError: ``obj`` contains itself.
        OSError: the file could not be written (``ENOSPC``: "No space left on device", ...);
            the message names the reason and the file, and any previous file is intact.
    """
    encoder = _Encoder()
    manifest = {"format": FORMAT, "version": VERSION, "root": encoder.encode(obj, "obj")}
    if not isinstance(f, (str, os.PathLike)):
        _write_archive(f, manifest, encoder.arrays)
        return
    atomic_write(os.fspath(f), lambda fh: _write_archive(fh, manifest, encoder.arrays))


def _write_archive(fh: BinaryIO, manifest: dict, arrays: list[tuple[str, np.ndarray]]) -> None:
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays:
            _write_array(zf, name, array)
        zf.writestr(MANIFEST, json.dumps(manifest, allow_nan=False))


def _write_array(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(name, "w", force_zip64=True) as entry:
        np.lib.format.write_array(entry, array, allow_pickle=False)


class _Encoder:
    """Turns an object tree into JSON, collecting arrays as numbered ``.npy`` entries."""

    def __init__(self) -> None:
        self.arrays: list[tuple[str, np.ndarray]] = []
        self._tensors: dict[int, str] = {}  # id(tensor) -> entry, so shared tensors stay shared
        self._keep: list[Any] = []  # keeps ids in _tensors valid while encoding
        self._open: set[int] = set()  # containers being encoded, to catch cycles

    def _add_array(self, array: np.ndarray, where: str) -> str:
        if array.dtype == dtypes.BFLOAT16:  # .npy cannot name it: its bits, tagged by caller
            array = array.view(np.uint16)
        if not _storable(array.dtype):
            raise TypeError(f"ddp.save cannot store a NumPy array of dtype {array.dtype} "
                            f"(at {where}); it stores {_DTYPE_NAMES}")
        name = f"data/{len(self.arrays)}.npy"
        self.arrays.append((name, array))
        return name

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, np.generic):  # before int/float: np.float64 subclasses float
            return {"$": "npscalar", "data": self._add_array(np.asarray(obj), where),
                    **_bits_tag(obj.dtype)}
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {"$": "float", "v": repr(float(obj))}
        if isinstance(obj, Tensor):
            return self._encode_tensor(obj, where)
        if isinstance(obj, np.ndarray):
            return {"$": "ndarray", "data": self._add_array(obj, where), **_bits_tag(obj.dtype)}
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
                "requires_grad": bool(t.requires_grad), "parameter": _is_parameter(t),
                **_bits_tag(t.array.dtype)}


def _bits_tag(dt: np.dtype) -> dict:
    """bfloat16 arrays are stored as their uint16 bits; the manifest node says so."""
    return {"bits_of": "bfloat16"} if dt == dtypes.BFLOAT16 else {}


def _from_bits(node: dict, array: np.ndarray, entry: str) -> np.ndarray:
    """Undo :func:`_bits_tag`: a tagged uint16 member read back as bfloat16."""
    tag = node.get("bits_of")
    if tag is None:
        return array
    if tag != "bfloat16" or array.dtype != np.uint16:
        raise ValueError(f"member {entry!r} is tagged as the bits of {tag!r} but holds "
                         f"{array.dtype}; ddp.save tags only uint16 bits of bfloat16")
    return array.view(dtypes.BFLOAT16)


def _storable(dt: np.dtype) -> bool:
    return dt.fields is None and dt.subdtype is None and dt.newbyteorder("=") in ARRAY_DTYPES


_DTYPE_NAMES = ", ".join(sorted(str(d) for d in ARRAY_DTYPES))


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
            is truncated or corrupt; it holds what ``save`` never writes (a compressed or
            encrypted member, an array of a dtype outside :data:`ARRAY_DTYPES`); or an
            ``.npy`` header claims more data than its member holds (raised before
            allocating). The message names the file and, where there is one, the member.
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
    size = fh.seek(0, os.SEEK_END)
    fh.seek(start)
    try:
        with zipfile.ZipFile(fh) as zf:
            _check_members(zf, name, size)
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
            if "root" not in manifest:
                raise ValueError("the manifest has no 'root'")
            return _Decoder(zf, name, map_location).decode(manifest["root"])
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError,
            RecursionError) as exc:
        kind = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RuntimeError(
            f"ddp.load: {name} is truncated or corrupt ({type(exc).__name__}: {kind})"
        ) from exc


def _check_members(zf: zipfile.ZipFile, name: str, archive_size: int) -> None:
    """Refuse what ``save`` never writes before reading any member.

    A compressed member can expand a thousandfold (a 2 MiB file into gigabytes), so only
    stored members are read; each must also fit inside the archive as it is on disk, which
    bounds every later read by the file's real size.
    """
    for info in zf.infolist():
        member = info.filename
        if info.compress_type != zipfile.ZIP_STORED:
            method = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                      zipfile.ZIP_LZMA: "lzma"}.get(info.compress_type,
                                                    f"method {info.compress_type}")
            raise RuntimeError(
                f"ddp.load: {name}: member {member!r} is compressed ({method}); ddp.save "
                f"writes uncompressed members only and ddp.load refuses to decompress (a small "
                f"compressed member can expand to gigabytes); the file was not written by "
                f"ddp.save"
            )
        if info.flag_bits & 0x1:
            raise RuntimeError(f"ddp.load: {name}: member {member!r} is encrypted; ddp.save "
                               f"never encrypts, so the file was not written by it")
        if (info.file_size != info.compress_size
                or info.header_offset + info.compress_size > archive_size):
            raise ValueError(
                f"member {member!r} claims {info.file_size} bytes, but the file of "
                f"{archive_size} bytes cannot hold them"
            )


def _looks_pickled(head: bytes) -> bool:
    """Protocol 0/1 pickles start with an opcode such as ``(``, ``]``, ``}`` or ``c``."""
    return head[:1] in (b"(", b"]", b"}", b"c", b"N", b"I", b"S", b"V")


def _field(node: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    """``node[key]``, which must be of ``kind``: a crafted manifest gets a clear error."""
    value = node.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"manifest node {node.get('$')!r} has no valid {key!r} "
                         f"(got {type(value).__name__})")
    return value


class _Decoder:
    def __init__(self, zf: zipfile.ZipFile, name: str, map_location: MapLocation) -> None:
        self.zf = zf
        self.name = name
        self.map_location = map_location
        self._tensors: dict[str, Tensor] = {}
        self._read: set[str] = set()  # members already read: each is read at most once

    def _array(self, entry: str) -> np.ndarray:
        """Read one ``.npy`` member, allocating no more than the bytes it holds."""
        if entry in self._read:
            raise ValueError(f"member {entry!r} is referenced twice (ddp.save stores every "
                             f"array once)")
        self._read.add(entry)
        info = self.zf.getinfo(entry)
        with self.zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version not in _NPY_VERSIONS:
                raise ValueError(f"member {entry!r} is a .npy file of version {version}; "
                                 f"ddp.save writes 1.0 or 2.0")
            shape, fortran_order, dt = _NPY_VERSIONS[version](fh)
            if not _storable(dt):
                raise RuntimeError(
                    f"ddp.load: {self.name}: member {entry!r} holds an array of dtype {dt}, "
                    f"which ddp.save never writes (it stores {_DTYPE_NAMES}); the file was not "
                    f"written by ddp.save"
                )
            if any(s < 0 for s in shape):
                raise ValueError(f"member {entry!r} has a .npy header with negative shape "
                                 f"{shape}")
            stored = info.file_size - fh.tell()
            nbytes = math.prod(shape) * dt.itemsize  # Python ints: no overflow
            if nbytes != stored:
                raise RuntimeError(
                    f"ddp.load: {self.name} is truncated or corrupt: member {entry!r} has a "
                    f".npy header claiming shape {shape} of {dt} ({nbytes} bytes), but it "
                    f"holds {stored} bytes of data"
                )
            buf = bytearray(nbytes)
            view, got = memoryview(buf), 0
            while got < nbytes:
                n = fh.readinto(view[got:])
                if not n:
                    raise EOFError(f"member {entry!r} ends after {got} of {nbytes} bytes")
                got += n
            if fh.read(1):  # also makes the member check its CRC
                raise ValueError(f"member {entry!r} holds more bytes than its header says")
        flat = np.frombuffer(buf, dtype=dt)
        if fortran_order:
            return flat.reshape(shape[::-1]).transpose()
        return flat.reshape(shape)

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            raise ValueError(f"unexpected manifest node of type {type(node).__name__}")
        tag = node.get("$")
        if tag == "dict":
            pairs = []
            for item in _field(node, "items", list):
                if not isinstance(item, list) or len(item) != 2:
                    raise ValueError("a dict item in the manifest is not a [key, value] pair")
                pairs.append((self._key(item[0]), self.decode(item[1])))
            return OrderedDict(pairs) if _field(node, "ordered", bool) else dict(pairs)
        if tag == "tuple":
            return tuple(self.decode(v) for v in _field(node, "items", list))
        if tag == "size":
            items = [self.decode(v) for v in _field(node, "items", list)]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise ValueError(f"a saved Size holds non-integers {items}")
            return Size(items)
        if tag == "tensor":
            return self._tensor(node)
        if tag == "ndarray":
            entry = _field(node, "data", str)
            return _from_bits(node, self._array(entry), entry)
        if tag == "npscalar":
            entry = _field(node, "data", str)
            array = _from_bits(node, self._array(entry), entry)
            if array.ndim != 0:
                raise ValueError(f"a saved NumPy scalar has shape {array.shape}")
            return array[()]
        if tag == "float":
            return float(_field(node, "v", str))
        if tag == "dtype":
            v = _field(node, "v", str)
            try:
                return dtypes.get_dtype(v)
            except TypeError:
                raise ValueError(f"unknown dtype {v!r}") from None
        if tag == "device":
            return self._device(_field(node, "v", str))
        if tag == "bytes":
            return bytes.fromhex(_field(node, "v", str))
        raise ValueError(f"unknown manifest tag {tag!r}")

    def _key(self, node: Any) -> Any:
        key = self.decode(node)
        key = tuple(key) if isinstance(key, list) else key
        try:
            hash(key)
        except TypeError:
            raise ValueError(f"a dict key of type {type(key).__name__} is unhashable") from None
        return key

    @staticmethod
    def _device(text: str) -> device:
        try:
            return device(text)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"invalid device {text!r} ({exc})") from None

    def _tensor(self, node: dict) -> Tensor:
        entry = _field(node, "data", str)
        if entry in self._tensors:
            return self._tensors[entry]
        array = _from_bits(node, self._array(entry), entry)
        try:
            dt = dtypes.from_numpy(array.dtype)
        except TypeError:
            raise ValueError(f"member {entry!r} holds a tensor of dtype {array.dtype}, "
                             f"which ddp tensors cannot hold") from None
        requires_grad = _field(node, "requires_grad", bool)
        if requires_grad and not dt.is_floating_point:
            raise ValueError(f"member {entry!r} holds a {dt.name} tensor marked "
                             f"requires_grad (only floating point tensors can require grad)")
        saved = str(self._device(_field(node, "device", str)))
        is_parameter = _field(node, "parameter", bool)
        if callable(self.map_location):
            t = self.map_location(Tensor(array), saved)
            if not isinstance(t, Tensor):
                raise TypeError(f"map_location returned {type(t).__name__}, expected a Tensor")
            array = t.array
        else:
            array = move_array(array, self._target(saved))
        if is_parameter:
            t = Parameter(array, requires_grad=requires_grad)
        else:
            t = Tensor(array, requires_grad=requires_grad)
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


__all__ = ["ARRAY_DTYPES", "load", "save"]
