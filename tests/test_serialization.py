"""ddp.save / ddp.load: round trips, pickles refused unexecuted, corruption, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
from ddp import atomic_file, serialization


def test_round_trip_of_nested_values(tmp_path):
    shared = ddp.randn(2, 3)
    obj = {
        "f32": ddp.randn(4, 5),
        "f16": ddp.ones(3, dtype=ddp.float16),
        "i8": ddp.tensor([1, -2], dtype=ddp.int8),
        "bool": ddp.tensor([True, False]),
        "scalar": ddp.tensor(3.5),
        "empty": ddp.zeros(0, 4),
        "grad": ddp.ones(2, requires_grad=True),
        "np": np.arange(6, dtype=np.int16).reshape(2, 3),
        "np_scalar": np.float64(2.25),
        7: [1, 2.5, float("nan"), float("-inf"), None, True, "s", b"\x00\xff"],
        (1, "k"): (shared, shared),
        "ordered": OrderedDict([("b", 1), ("a", 2)]),
        "size": ddp.Size([2, 3]),
        "dtype": ddp.float16,
        "device": ddp.device("cpu"),
    }
    path = tmp_path / "obj.ddp"
    ddp.save(obj, path)
    back = ddp.load(path)
    assert list(back) == list(obj)
    for key in ("f32", "f16", "i8", "bool", "scalar", "empty"):
        assert back[key].dtype == obj[key].dtype and back[key].shape == obj[key].shape
        np.testing.assert_array_equal(back[key].numpy(), obj[key].numpy())
    assert back["grad"].requires_grad and back["grad"].is_leaf
    assert not back["f32"].requires_grad
    assert back["np"].dtype == np.int16 and back["np"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert isinstance(back["np_scalar"], np.float64) and back["np_scalar"] == 2.25
    values = back[7]
    assert values[:2] == [1, 2.5] and isinstance(values[0], int) and math.isnan(values[2])
    assert values[3:] == [float("-inf"), None, True, "s", b"\x00\xff"]
    first, second = back[(1, "k")]
    assert first is second  # one tensor saved twice comes back as one tensor
    np.testing.assert_array_equal(first.numpy(), shared.numpy())
    assert type(back["ordered"]) is OrderedDict and list(back["ordered"]) == ["b", "a"]
    assert type(back["size"]) is ddp.Size and back["size"] == (2, 3)
    assert back["dtype"] is ddp.float16 and back["device"] == ddp.device("cpu")


def test_model_and_optimizer_state_round_trip(tmp_path):
    model = ddp.nn.Linear(4, 3)
    opt = ddp.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    x = ddp.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    ddp.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ck")
    ck = ddp.load(tmp_path / "ck")
    assert sorted(ck["opt"]["state"]) == [0, 1]
    assert ck["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)

    model2 = ddp.nn.Linear(4, 3)
    model2.load_state_dict(ck["model"])
    opt2 = ddp.optim.Adam(model2.parameters())
    opt2.load_state_dict(ck["opt"])
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


def test_parameters_come_back_as_parameters(tmp_path):
    p = ddp.nn.Parameter(ddp.ones(2))
    ddp.save([p], tmp_path / "p")
    (back,) = ddp.load(tmp_path / "p")
    assert isinstance(back, ddp.nn.Parameter) and back.requires_grad


def test_file_objects_and_map_location():
    buf = io.BytesIO()
    ddp.save({"w": ddp.arange(3).float()}, buf)
    buf.seek(0)
    assert ddp.load(buf, map_location="cpu")["w"].tolist() == [0.0, 1.0, 2.0]
    buf.seek(0)
    moved = ddp.load(buf, map_location=lambda t, where: t * 2)
    assert moved["w"].tolist() == [0.0, 2.0, 4.0]


def test_unsupported_type_names_where(tmp_path):
    with pytest.raises(TypeError, match=r"builtins.object \(at obj\['a'\]\[1\]\)"):
        ddp.save({"a": [1, object()]}, tmp_path / "bad")
    assert not os.listdir(tmp_path)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        ddp.save(loop, tmp_path / "loop")


class _Marker:
    """Unpickling this would create a file: the proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_is_refused_and_never_executed(tmp_path, protocol):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Marker(str(marker))}, f, protocol=protocol)
    with pytest.raises(RuntimeError, match=r"evil\.pt holds a Python pickle"):
        ddp.load(path, weights_only=False)
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path):
    torch = torch_oracle()
    path = tmp_path / "torch.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="written by torch.save"):
        ddp.load(path)


def test_truncated_and_corrupt_files_raise_naming_the_path(tmp_path):
    path = tmp_path / "ck.ddp"
    ddp.save({"w": ddp.randn(1000)}, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.ddp"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"cut\.ddp is truncated or corrupt"):
        ddp.load(cut)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside the array's bytes: the CRC check catches it
    bad = tmp_path / "bad.ddp"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(RuntimeError, match=r"bad\.ddp is truncated or corrupt"):
        ddp.load(bad)
    empty = tmp_path / "empty.ddp"
    empty.write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"empty\.ddp is not a ddp.save file \(no zip"):
        ddp.load(empty)


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck.ddp"
    ddp.save({"w": ddp.zeros(3), "step": 1}, path)
    before = path.read_bytes()

    def fail(zf, name, array):
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "_write_array", fail)
    with pytest.raises(OSError, match="disk full"):
        ddp.save({"w": ddp.ones(3), "step": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.ddp"]  # no temporary file left behind
    assert ddp.load(path)["step"] == 1


def test_saved_file_gets_normal_permissions(tmp_path):
    path = tmp_path / "ck.ddp"
    ddp.save([1], path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------- untrusted files: load
def _archive(path, members, manifest_root, compression=zipfile.ZIP_STORED):
    """A zip laid out as ddp.save lays it out, with hand-made members (name -> bytes)."""
    manifest = {"format": serialization.FORMAT, "version": serialization.VERSION,
                "root": manifest_root}
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(serialization.MANIFEST, json.dumps(manifest))
    return path


def _npy(descr, shape, data: bytes, fortran_order=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
    return buf.getvalue() + data


def _peak_bytes(fn):
    """Peak Python-traced allocation (NumPy's buffers included) while ``fn`` runs."""
    tracemalloc.start()
    try:
        with contextlib.suppress(RuntimeError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_compressed_members_are_refused_before_decompressing(tmp_path):
    # 16 MiB of zeros deflate to about 16 KiB: the shape of a zip bomb.
    zeros = np.zeros(1 << 21, dtype=np.float64)
    path = _archive(tmp_path / "bomb.ddp", {"data/0.npy": _npy("<f8", zeros.shape,
                                                               zeros.tobytes())},
                    {"$": "ndarray", "data": "data/0.npy"}, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    del zeros
    with pytest.raises(RuntimeError, match=r"bomb\.ddp: member 'data/0\.npy' is compressed "
                                           r"\(deflate\)"):
        ddp.load(path)
    assert _peak_bytes(lambda: ddp.load(path)) < 1 << 20

    # A file ddp.save wrote, re-zipped with compression: refused too, naming the member.
    good = tmp_path / "good.ddp"
    ddp.save({"w": ddp.ones(3)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "z.ddp", "w",
                                                       zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(RuntimeError, match=r"z\.ddp: member 'data/0\.npy' is compressed"):
        ddp.load(tmp_path / "z.ddp")


@pytest.mark.parametrize("shape", [(1 << 30,), (1 << 40,), (1 << 20, 1 << 20, 8)],
                         ids=["8GiB", "8TiB", "3d"])
def test_npy_header_claiming_more_than_stored_raises_before_allocating(tmp_path, shape):
    path = _archive(tmp_path / "big.ddp", {"data/0.npy": _npy("<f8", shape, b"\0" * 16)},
                    {"$": "tensor", "data": "data/0.npy", "device": "cpu",
                     "requires_grad": False, "parameter": False})
    with pytest.raises(RuntimeError, match=r"big\.ddp is truncated or corrupt: member "
                                           r"'data/0\.npy' has a \.npy header claiming shape"
                                           r".* but it holds 16 bytes"):
        ddp.load(path)
    assert _peak_bytes(lambda: ddp.load(path)) < 1 << 20


def test_npy_header_with_fewer_bytes_than_stored_or_negative_shape(tmp_path):
    root = {"$": "ndarray", "data": "data/0.npy"}
    extra = _archive(tmp_path / "extra.ddp", {"data/0.npy": _npy("<f4", (2,), b"\0" * 12)},
                     root)
    with pytest.raises(RuntimeError, match=r"extra\.ddp .*\(8 bytes\), but it holds 12"):
        ddp.load(extra)
    neg = _archive(tmp_path / "neg.ddp", {"data/0.npy": _npy("<f4", (-1, 4), b"")}, root)
    with pytest.raises(RuntimeError, match=r"neg\.ddp is truncated or corrupt.*negative shape"):
        ddp.load(neg)


def test_member_claiming_more_bytes_than_the_file_holds(tmp_path):
    path = tmp_path / "ck.ddp"
    ddp.save({"w": ddp.ones(4)}, path)
    data = bytearray(path.read_bytes())
    # Raise the uncompressed size in the central directory entry of data/0.npy.
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x01\x02"))
    info = zipfile.ZipFile(path).getinfo("data/0.npy")
    assert info.file_size < 1 << 16
    size_field = cd + 24  # central directory: uncompressed size at offset 24 (zip64: 0xFFFFFFFF)
    if data[size_field:size_field + 4] != b"\xff\xff\xff\xff":
        data[size_field:size_field + 4] = (1 << 31).to_bytes(4, "little")
        data[size_field - 4:size_field] = (1 << 31).to_bytes(4, "little")
    else:  # force_zip64: sizes live in the extra field as two 8-byte values
        extra = data.find(b"\x01\x00", cd + 46)
        data[extra + 4:extra + 20] = ((1 << 40).to_bytes(8, "little") * 2)
    bad = tmp_path / "bad.ddp"
    bad.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"bad\.ddp is truncated or corrupt.*data/0\.npy.*"
                                           r"cannot hold them"):
        ddp.load(bad)


@pytest.mark.parametrize("descr, itemsize", [
    ("<U3", 12), ("|V8", 8), ([("a", "<f4"), ("b", "<i4")], 8), ("|O", 8), ("<M8[s]", 8),
    ("<m8[s]", 8), ("|S4", 4),
], ids=["unicode", "void", "structured", "object", "datetime", "timedelta", "bytes"])
def test_dtypes_save_never_writes_are_refused(tmp_path, descr, itemsize):
    path = _archive(tmp_path / "odd.ddp", {"data/0.npy": _npy(descr, (2,), b"\0" * 2 * itemsize)},
                    {"$": "ndarray", "data": "data/0.npy"})
    with pytest.raises(RuntimeError, match=r"odd\.ddp: member 'data/0\.npy' holds an array of "
                                           r"dtype .*which ddp\.save never writes"):
        ddp.load(path)


def test_save_and_load_accept_the_same_dtypes(tmp_path):
    arrays = {str(dt): np.arange(6).astype(dt).reshape(2, 3)
              for dt in sorted(serialization.ARRAY_DTYPES, key=str)}
    arrays["big-endian"] = np.arange(4, dtype=">f4")
    arrays["fortran"] = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    ddp.save(arrays, tmp_path / "all.ddp")
    back = ddp.load(tmp_path / "all.ddp")
    for key, array in arrays.items():
        assert back[key].dtype == array.dtype, key
        np.testing.assert_array_equal(back[key], array)
    assert back["fortran"].flags.f_contiguous
    assert len(serialization.ARRAY_DTYPES) == 14
    for bad in (np.zeros(2, np.longdouble), np.array(["a"]), np.zeros(2, "V4"),
                np.zeros(2, [("a", "<f4")]), np.zeros(2, "M8[s]")):
        with pytest.raises(TypeError, match="cannot store a NumPy array of dtype "
                           + re.escape(str(bad.dtype))):
            ddp.save({"x": bad}, tmp_path / "bad.ddp")


def test_tensor_member_of_a_dtype_tensors_cannot_hold(tmp_path):
    path = _archive(tmp_path / "t.ddp", {"data/0.npy": _npy("<u2", (2,), b"\0" * 4)},
                    {"$": "tensor", "data": "data/0.npy", "device": "cpu",
                     "requires_grad": False, "parameter": False})
    with pytest.raises(RuntimeError, match=r"t\.ddp is truncated or corrupt.*tensor of dtype "
                                           r"uint16"):
        ddp.load(path)


def test_each_array_member_is_read_once(tmp_path):
    # One 8 MiB member referenced 1000 times would need 8 GB: the second reference is refused.
    root = [{"$": "ndarray", "data": "data/0.npy"}] * 1000
    path = _archive(tmp_path / "amp.ddp", {"data/0.npy": _npy("<f8", (1 << 20,),
                                                              b"\0" * (8 << 20))}, root)
    with pytest.raises(RuntimeError, match=r"amp\.ddp .*'data/0\.npy' is referenced twice"):
        ddp.load(path)
    # A tensor saved twice is one member read once and comes back as one object.
    t = ddp.ones(2)
    ddp.save([t, t, {"again": t}], tmp_path / "shared.ddp")
    a, b, c = ddp.load(tmp_path / "shared.ddp")
    assert a is b is c["again"]


@pytest.mark.parametrize("root, fragment", [
    ({"$": "dict", "items": 5}, "no valid 'items'"),
    ({"$": "dict", "items": [[1]], "ordered": False}, "[key, value] pair"),
    ({"$": "dict", "items": [[[{"$": "dict", "items": [], "ordered": False}], 1]],
      "ordered": False}, "unhashable"),
    ({"$": "tensor", "data": 3}, "no valid 'data'"),
    ({"$": "size", "items": ["a"]}, "non-integers"),
    ({"$": "dtype", "v": "float99"}, "unknown dtype 'float99'"),
    ({"$": "device", "v": "banana"}, "invalid device 'banana'"),
    ({"$": "bytes", "v": "zz"}, "non-hexadecimal"),
    ({"$": "what"}, "unknown manifest tag 'what'"),
    ([[[[[[[[[[1]]]]]]]]]] * 1, None),
], ids=["items", "pair", "unhashable", "data", "size", "dtype", "device", "bytes", "tag", "ok"])
def test_malformed_manifests_raise_the_documented_error(tmp_path, root, fragment):
    path = _archive(tmp_path / "m.ddp", {}, root)
    if fragment is None:
        assert ddp.load(path) == root
        return
    with pytest.raises(RuntimeError, match=r"m\.ddp is truncated or corrupt") as info:
        ddp.load(path)
    assert fragment in str(info.value)


def test_deeply_nested_manifest_raises_the_documented_error(tmp_path):
    path = tmp_path / "deep.ddp"
    manifest = ('{"format": "ddp.save", "version": 1, "root": ' + "[" * 100_000 + "]" * 100_000
                + "}")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(serialization.MANIFEST, manifest)
    with pytest.raises(RuntimeError, match=r"deep\.ddp is truncated or corrupt"):
        ddp.load(path)


def test_tensor_marked_requires_grad_with_an_integer_dtype(tmp_path):
    path = _archive(tmp_path / "g.ddp", {"data/0.npy": _npy("<i8", (1,), b"\0" * 8)},
                    {"$": "tensor", "data": "data/0.npy", "device": "cpu",
                     "requires_grad": True, "parameter": False})
    with pytest.raises(RuntimeError, match=r"g\.ddp is truncated or corrupt.*int64 tensor "
                                           r"marked requires_grad"):
        ddp.load(path)


# ------------------------------------------------------------ writes: disk full, interrupted
def _enospc_after(limit):
    """An ``os.write`` stand-in that writes ``limit`` bytes, then fails as a full disk does."""
    written = [0]

    def write(fd, data):
        if written[0] + len(data) > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return os.write(fd, data)

    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_write_errors_name_the_errno_and_the_file(tmp_path, monkeypatch, code):
    path = tmp_path / "ck.ddp"
    ddp.save({"w": ddp.zeros(3), "step": 1}, path)
    before = path.read_bytes()

    def fail(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic_file, "_write", fail)
    with pytest.raises(OSError) as info:
        ddp.save({"w": ddp.ones(1000), "step": 2}, path)
    assert info.value.errno == code
    message = str(info.value)
    assert os.strerror(code) in message and str(path) in message and "is intact" in message
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.ddp"]


def test_disk_full_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.ddp"
    ddp.save({"step": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr(atomic_file, "_write", _enospc_after(516064))
    with pytest.raises(OSError, match=r"No space left on device .*ck\.ddp") as info:
        ddp.save({"w": ddp.zeros(328000)}, path)  # 1312000 bytes of data
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.ddp"]


def test_short_writes_are_completed_and_no_progress_is_enospc(tmp_path, monkeypatch):
    calls = []

    def short(fd, data):  # the kernel may write less than asked: at most 1000 bytes a call
        calls.append(len(data))
        return os.write(fd, bytes(data[:1000]))

    monkeypatch.setattr(atomic_file, "_write", short)
    w = ddp.randn(5000)
    ddp.save({"w": w}, tmp_path / "ok.ddp")
    assert len(calls) > 20
    np.testing.assert_array_equal(ddp.load(tmp_path / "ok.ddp")["w"].numpy(), w.numpy())

    monkeypatch.setattr(atomic_file, "_write", lambda fd, data: 0)
    with pytest.raises(OSError, match="No space left on device") as info:
        ddp.save({"w": w}, tmp_path / "ok.ddp")
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["ok.ddp"]
    np.testing.assert_array_equal(ddp.load(tmp_path / "ok.ddp")["w"].numpy(), w.numpy())


def _temp_name(host, pid, target="ck.ddp"):
    return f"{atomic_file.TMP_PREFIX}{host}~{pid}~abc123~{target}{atomic_file.TMP_SUFFIX}"


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    host = atomic_file._host()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead": _temp_name(host, dead_pid),
            "live": _temp_name(host, live.pid),
            "mine": _temp_name(host, os.getpid()),
            "live-old": _temp_name(host, live.pid, "slow.ddp"),
            "other-host-fresh": _temp_name("elsewhere", dead_pid),
            "other-host-old": _temp_name("elsewhere", 1, "x.pt"),
            "unrelated": ".ck.ddp.swp",
        }
        for name in files.values():
            (tmp_path / name).write_bytes(b"partial")
        old = time.time() - atomic_file.STALE_AFTER_S - 60
        for key in ("other-host-old", "live-old"):
            os.utime(tmp_path / files[key], (old, old))
        ddp.save({"a": 1}, tmp_path / "new.ddp")
        left = set(os.listdir(tmp_path))
    finally:
        live.kill()
        live.wait()
    assert left == {"new.ddp", files["live"], files["mine"], files["live-old"],
                    files["other-host-fresh"], files["unrelated"]}


_KILLED_SAVE = """
import os, signal, sys
import ddp
from ddp import atomic_file
ddp.save({"step": 1}, sys.argv[1])
def die(fd, data):
    os.write(fd, bytes(data[:100]))
    os.kill(os.getpid(), signal.SIGKILL)
atomic_file._write = die
ddp.save({"w": ddp.zeros(100000), "step": 2}, sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    path = tmp_path / "ck.ddp"
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path)],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL
    names = os.listdir(tmp_path)
    assert len(names) == 2 and any(n.startswith(atomic_file.TMP_PREFIX) for n in names)
    assert ddp.load(path)["step"] == 1  # the killed save left the previous file
    ddp.save({"step": 3}, tmp_path / "other.ddp")
    assert sorted(os.listdir(tmp_path)) == ["ck.ddp", "other.ddp"]


def test_temporary_file_that_cannot_be_created_names_the_target(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs["dir"])

    monkeypatch.setattr(atomic_file.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=r"could not create a temporary file in .* to "
                                              r"write .*ck\.ddp.*Permission denied"):
        ddp.save({"a": 1}, tmp_path / "ck.ddp")
    assert os.listdir(tmp_path) == []
