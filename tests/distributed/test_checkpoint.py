"""ddp.distributed.checkpoint on the threads backend: round trips, resharding, atomicity.

The cases live in ``_zero_cases.py`` and ``_checkpoint_cases.py`` (their MPI versions are in
test_zero_mpi.py and test_checkpoint_mpi.py); the file-level attacks (paths leaving the
directory, crafted indexes, leftovers) run in one process here.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed import checkpoint
from ddp.distributed.checkpoint import storage

from . import _zero_cases as cases


def run(fn, world_size: int, *args) -> None:
    dist.spawn(fn, world_size, args=args)


@pytest.mark.parametrize(("save_ranks", "load_ranks"),
                         [(2, 2), (3, 2), (2, 3), (4, 2), (4, 3), (1, 4), (3, 1)])
def test_reshard_resume_bit_identical(save_ranks, load_ranks):
    run(cases.case_reshard_resume, max(save_ranks, load_ranks), save_ranks, load_ranks)


@pytest.mark.parametrize(("save_kind", "load_kind"), [("plain", "zero"), ("zero", "plain")])
def test_plain_and_sharded_interchange(save_kind, load_kind):
    run(cases.case_reshard_resume, 3, 3, 2, save_kind, load_kind)


@pytest.mark.parametrize("stage", [1, 2])
def test_sharded_state_roundtrip(stage):
    run(cases.case_sharded_state_roundtrip, 3, stage)


def test_interrupted_save_keeps_previous(monkeypatch):
    monkeypatch.setattr(storage, "write_array", cases.failing_write_array)
    run(cases.case_interrupted_save, 3)


def test_index_layout_and_no_pickle(tmp_path):
    def fn():
        model, opt = cases._build("zero", dist.get_default_group(), 0)
        cases._replicated_step(model, opt, 0)
        checkpoint.save(str(tmp_path), model=model, optimizer=opt, epoch=3)

    run(fn, 3)
    path = storage.latest_dir(str(tmp_path))
    assert os.path.basename(path) == "v000001"
    with open(os.path.join(path, "index.json")) as f:
        index = json.load(f)
    assert index["format"] == "ddp.distributed.checkpoint/2" and len(index["sha256"]) == 64
    for name, record in index["files"].items():  # every file's size and SHA-256
        with open(os.path.join(path, name), "rb") as f:
            data = f.read()
        assert record["bytes"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert index["world_size"] == 3 and index["extra"] == {"epoch": 3}
    assert index["params"]["b"] == {"space": "params/float32", "offset": 22, "shape": [13],
                                    "group": 1}
    assert index["optimizer"]["state"]["w"]["exp_avg"] == {
        "space": "state/exp_avg/float32", "offset": 7, "shape": [5, 3]}
    assert index["optimizer"]["state"]["w"]["step"] == {"scalar": 1.0, "dtype": "float32"}
    files = index["spaces"]["state/exp_avg_sq/float32"]["files"]
    # Each rank's file holds its pieces (one per bucket), concatenated; together they cover
    # every element exactly once.
    covered = sorted((f["start"], f["stop"]) for f in files)
    assert covered[0][0] == 0 and covered[-1][1] == 35
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
    assert {f["file"] for f in files} == {
        f"state.exp_avg_sq.float32.rank{r}.npy" for r in range(3)}
    for name in {f["file"] for f in files}:  # plain arrays, loadable without pickle
        pieces = [f for f in files if f["file"] == name]
        assert [f["offset"] for f in pieces] == list(
            np.cumsum([0] + [f["stop"] - f["start"] for f in pieces])[:-1])
        assert np.load(os.path.join(path, name), allow_pickle=False).shape == (
            sum(f["stop"] - f["start"] for f in pieces),)


def test_plain_single_process_without_init(tmp_path):
    model = cases.Net(0)
    opt = ddp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cases.loss_of(model, 0, 8).backward()
    opt.step()
    for _ in range(3):  # keep_last=2 prunes the oldest
        checkpoint.save(str(tmp_path), model=model, optimizer=opt, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["latest", "v000002", "v000003"]
    model2 = cases.Net(1)
    opt2 = ddp.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    checkpoint.load(str(tmp_path), model=model2, optimizer=opt2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        np.testing.assert_array_equal(a.array, b.array)
        np.testing.assert_array_equal(opt.state[a]["momentum_buffer"].array,
                                      opt2.state[b]["momentum_buffer"].array)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(str(tmp_path), model=cases.Net(0))
