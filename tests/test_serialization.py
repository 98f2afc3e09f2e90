"""ddp.save / ddp.load: round trips, pickles refused unexecuted, corruption, atomic writes."""

from __future__ import annotations

import io
import math
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
from ddp import serialization


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
