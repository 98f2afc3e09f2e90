"""ddp.distributed.checkpoint under faults: collective errors, corruption, paths that leave the
checkpoint directory, crafted indexes, leftovers of failed saves, a full disk.

The rank-level cases (threads backend here, MPI in test_checkpoint_mpi.py) live in
``_checkpoint_cases.py``; the file-level attacks run in one process.
"""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp.distributed import checkpoint
from ddp.distributed.checkpoint import agree, files, index, storage

from . import _checkpoint_cases as fault_cases
from . import _zero_cases as cases


def run(fn, world_size: int, *args) -> None:
    dist.spawn(fn, world_size, args=args)


# ------------------------------------------------------------------- collective failure
@pytest.mark.parametrize("world", [2, 3])
def test_resume_idiom_on_first_run(world):
    run(fault_cases.case_resume_first_run, world)


@pytest.mark.parametrize("world", [2, 3])
def test_save_error_on_rank0_raises_everywhere(world):
    run(fault_cases.case_save_error_on_rank0, world)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("bad", ["index", "shard"])
def test_load_error_on_one_rank_raises_everywhere(world, bad):
    run(fault_cases.case_load_error_on_one_rank, world, bad)


def test_corruption_sweep_ranks():
    run(fault_cases.case_corruption_sweep, 2, 41, 97)


def test_enospc_names_the_file_on_every_rank(monkeypatch):
    def full(path, array):
        if dist.get_rank() == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return files.write_array(path, array)

    monkeypatch.setattr(storage, "write_array", full)

    def fn():
        directory = cases.shared_tmpdir()
        model, opt = cases._build("zero", dist.get_default_group(), 0)
        with pytest.raises(OSError) as info:
            checkpoint.save(directory, model=model, optimizer=opt)
        assert info.value.errno == errno.ENOSPC
        assert "rank 1: no space left on device (ENOSPC) writing" in str(info.value)
        assert ".rank1.npy" in str(info.value)
        dist.barrier()
        assert os.listdir(directory) == []  # the temporary version is gone

    run(fn, 2)


class _Custom(Exception):
    pass


@pytest.mark.parametrize(("raised", "expected", "text"), [
    (lambda: open("/nonexistent/x"), FileNotFoundError, "No such file or directory"),
    (lambda: json.loads("{"), ValueError, "JSONDecodeError: Expecting"),
    (lambda: {}["key"], KeyError, "rank 1: key"),
    (lambda: (_ for _ in ()).throw(_Custom("odd")), RuntimeError, "_Custom: odd"),
    (lambda: (_ for _ in ()).throw(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")),
     ValueError, "UnicodeDecodeError"),
])
def test_agreement_raises_one_builtin_type_everywhere(raised, expected, text):
    """Only strings cross ranks: the type is the first allowed builtin of the MRO."""
    def fn():
        rank = dist.get_rank()
        pg = dist.get_default_group()

        def work():
            if rank in (1, 2):
                raised()
            return rank * 10

        with pytest.raises(expected) as info:
            agree.run(pg, "op", work)
        assert type(info.value) is expected
        assert "op: rank 1: " in str(info.value) and text in str(info.value), str(info.value)
        assert "also failed on rank(s) [2]" in str(info.value)
        assert agree.gather(pg, "op", lambda: rank * 10) == [0, 10, 20]  # still in step

    run(fn, 3)


def test_agreement_keeps_errno():
    def fn():
        def work():
            if dist.get_rank() == 0:
                raise OSError(errno.EACCES, "denied", "/x")
        with pytest.raises(PermissionError) as info:  # OSError(EACCES) is a PermissionError
            agree.run(dist.get_default_group(), "op", work)
        assert info.value.errno == errno.EACCES and "rank 0: denied: '/x'" in str(info.value)

    run(fn, 2)


# ------------------------------------------------------------------- one-process helpers
def _saved_plain(root) -> tuple[str, tuple]:
    model = cases.Net(0)
    opt = ddp.optim.AdamW(cases.groups_of(model), lr=0.02)
    cases.loss_of(model, 0, 8).backward()
    opt.step()
    return checkpoint.save(str(root), model=model, optimizer=opt, step=1), (model, opt)


def _body(version: str) -> dict:
    with open(os.path.join(version, storage.INDEX)) as f:
        body = json.load(f)
    del body["format"], body["sha256"]
    return body


def _rewrite(version: str, body: dict) -> None:
    """A crafted index with a *valid* digest: what an attacker (not bit rot) could write."""
    with open(os.path.join(version, storage.INDEX), "wb") as f:
        f.write(index.encode(body))


def _load_error(root, exc_type=ValueError, model=None, with_opt=True) -> str:
    model = model or cases.Net(3)
    opt = ddp.optim.AdamW(cases.groups_of(model), lr=0.02) if with_opt else None
    with pytest.raises(exc_type) as info:
        checkpoint.load(str(root), model=model, optimizer=opt)
    return str(info.value)


def test_corruption_sweep_single_process(tmp_path):
    """A 2-rank ZeRO checkpoint loaded at world size 1: a stride of single-bit flips over the
    index, every shard and ``latest``; each raises naming the file or loads bit-equal."""
    directory = str(tmp_path)

    def fn():
        model, opt = cases._build("zero", dist.get_default_group(), 0)
        cases._replicated_step(model, opt, 0)
        checkpoint.save(directory, model=model, optimizer=opt, step=1)

    run(fn, 2)
    reference = cases.Net(0)
    ref_opt = ddp.optim.AdamW(cases.groups_of(reference), lr=0.02)
    checkpoint.load(directory, model=reference, optimizer=ref_opt)
    expected = cases.params_of(reference)
    expected_state = {(i, k): v.array.copy() for i, p in enumerate(reference.parameters())
                      for k, v in ref_opt.state[p].items()}
    version = storage.latest_dir(directory)
    targets = fault_cases.flip_targets(version, directory, 37, 11)
    assert 300 <= len(targets) <= 450, len(targets)
    raised = 0
    for path, position in targets:
        original = fault_cases.flip(path, position)
        model = cases.Net(5)
        opt = ddp.optim.AdamW(cases.groups_of(model), lr=0.02)
        try:
            checkpoint.load(directory, model=model, optimizer=opt)
        except (ValueError, FileNotFoundError) as exc:
            assert os.path.basename(path) in str(exc), (path, position, str(exc))
            raised += 1
        else:
            for mine, ref in zip(cases.params_of(model), expected, strict=True):
                np.testing.assert_array_equal(mine, ref, err_msg=f"{path}@{position}")
            for i, p in enumerate(model.parameters()):
                for k, v in opt.state[p].items():
                    np.testing.assert_array_equal(v.array, expected_state[(i, k)])
        finally:
            with open(path, "wb") as f:
                f.write(original)
    assert raised >= len(targets) * 9 // 10, (raised, len(targets))


# --------------------------------------------------------------- nothing outside the root
@pytest.mark.parametrize("digest", ["valid", "stale"])
@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "model/../../x.npy",
                                  "model/./weight.npy", "..", "model//w.npy", ""])
def test_index_file_names_leaving_the_directory_are_refused(tmp_path, name, digest):
    version, _ = _saved_plain(tmp_path / "ckpt")
    with open(os.path.join(version, storage.INDEX)) as f:
        stale = json.load(f)["sha256"]
    body = _body(version)
    old = next(iter(body["files"]))
    body["files"][name] = body["files"].pop(old)
    for space in body["spaces"].values():
        for piece in space["files"]:
            if piece["file"] == old:
                piece["file"] = name
    if digest == "valid":
        _rewrite(version, body)
    else:  # edited by hand: the digest no longer matches, and the entry is still named
        with open(os.path.join(version, storage.INDEX), "w") as f:
            json.dump({**body, "format": index.FORMAT, "sha256": stale}, f)
    message = _load_error(tmp_path / "ckpt")
    assert "not a plain file name" in message and repr(name) in message, message
    assert ("is corrupt" in message) == (digest == "stale"), message


def test_symlinked_shard_and_model_dir_are_refused(tmp_path):
    root = tmp_path / "ckpt"
    model = ddp.nn.Linear(2, 3)
    model.register_buffer("running", ddp.ones(3))
    version = checkpoint.save(str(root), model=model)
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = os.path.join(version, "model", "running.npy")
    os.replace(shard, outside / "running.npy")  # same bytes, same digest: only the link differs
    os.symlink(outside / "running.npy", shard)
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        checkpoint.load(str(root), model=model)
    os.remove(shard)
    os.replace(os.path.join(version, "model"), outside / "model")
    os.replace(outside / "running.npy", outside / "model" / "running.npy")
    os.symlink(outside / "model", os.path.join(version, "model"))
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        checkpoint.load(str(root), model=model)


def test_symlinked_file_is_refused_even_inside(tmp_path):
    """O_NOFOLLOW: a link to a file inside the directory is refused too (realpath differs)."""
    model = ddp.nn.Linear(2, 3)
    model.register_buffer("running", ddp.ones(3))
    version = checkpoint.save(str(tmp_path), model=model)
    shard = os.path.join(version, "model", "running.npy")
    os.replace(shard, os.path.join(version, "model", "other.npy"))
    os.symlink("other.npy", shard)
    with pytest.raises(ValueError, match="symlink"):
        checkpoint.load(str(tmp_path), model=model)
    with pytest.raises(ValueError, match="symlink"):  # the reader itself refuses links
        files.read_bytes(shard, 1 << 20)


@pytest.mark.parametrize("pointer", ["../other/v000001\n", "/tmp\n", "v000001/../../x\n",
                                     "v1\n", "\xff\xfe", "v000001\nv000002\n"])
def test_latest_outside_the_root_or_malformed_is_refused(tmp_path, pointer):
    _saved_plain(tmp_path / "ckpt")
    with open(tmp_path / "ckpt" / "latest", "w", encoding="latin-1") as f:
        f.write(pointer)
    message = _load_error(tmp_path / "ckpt")
    assert "pointer" in message and "latest" in message and "corrupt" in message, message


def test_latest_naming_a_symlinked_version_is_refused(tmp_path):
    root = tmp_path / "ckpt"
    version, _ = _saved_plain(root)
    os.replace(version, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", version)
    assert "outside the root" in _load_error(root)
    os.remove(version)
    os.symlink(tmp_path / "elsewhere" / "index.json", root / "latest.target")
    os.replace(root / "latest", tmp_path / "latest.bak")
    os.symlink(root / "latest.target", root / "latest")  # latest itself a symlink
    assert "symlink" in _load_error(root)


# ----------------------------------------------------------------------- crafted indexes
def test_crafted_indexes_are_refused_naming_the_entry(tmp_path):
    root = tmp_path / "ckpt"
    version, _ = _saved_plain(root)
    pristine = _body(version)

    def crafted(mutate, *needles, model=None, with_opt=True):
        body = json.loads(json.dumps(pristine))
        mutate(body)
        _rewrite(version, body)
        message = _load_error(root, model=model, with_opt=with_opt)
        assert all(n in message for n in needles), message

    space = "params/float32"
    file0 = pristine["spaces"][space]["files"][0]["file"]
    crafted(lambda b: b["files"][file0].update(dtype="object"), "dtype 'object'", file0)
    crafted(lambda b: b["spaces"][space].update(numel=36), "do not tile", space)
    crafted(lambda b: b["files"][file0].update(bytes=10), file0)  # size differs from disk
    crafted(lambda b: b["files"][file0].update(sha256="0" * 64), file0, "SHA-256")
    # A shifted offset, model-only: must not load shifted weights.
    crafted(lambda b: b["params"]["a"].update(offset=1), "params['a']", "starts at 1",
            with_opt=False)
    # A renamed state key: the model has no such key, and lacks the one it expects.
    crafted(lambda b: b["model"].update(c=b["model"].pop("a")), "missing key(s) ['a']",
            "unexpected key(s) ['c']", with_opt=False)
    crafted(lambda b: b["optimizer"]["state"].update(zz=b["optimizer"]["state"].pop("a")),
            "'zz'")
    # A renamed state key whose range still points at the old key's space.
    crafted(lambda b: b["optimizer"]["state"]["a"].update(
        exp_avgx=b["optimizer"]["state"]["a"].pop("exp_avg")), "'exp_avgx'",
        "state/exp_avgx/float32")
    crafted(lambda b: b["optimizer"].update(param_groups=b["optimizer"]["param_groups"][:1]),
            "1 param groups", "has 2")
    crafted(lambda b: b.update(extra=[]), "invalid entry: extra")
    crafted(lambda b: b["optimizer"]["state"]["a"]["step"].update(dtype="V8"), "'V8'")


@pytest.mark.parametrize("text", [b"{trunc", b"\xff\xfe{}", b'{"format": 1}', b"[]",
                                  b'{"a": 1, "a": 2}', b"[" * 100000])
def test_unparsable_indexes_name_the_file(tmp_path, text):
    version, _ = _saved_plain(tmp_path / "ckpt")
    with open(os.path.join(version, storage.INDEX), "wb") as f:
        f.write(text)
    message = _load_error(tmp_path / "ckpt")
    assert "index.json" in message and "corrupt" in message, message


def test_old_format_is_refused_clearly(tmp_path):
    version, _ = _saved_plain(tmp_path / "ckpt")
    with open(os.path.join(version, storage.INDEX), "w") as f:
        json.dump({"format": "ddp.distributed.checkpoint/1", "spaces": {}}, f)
    message = _load_error(tmp_path / "ckpt")
    assert "written before checksums" in message and "does not load" in message, message


# ------------------------------------------------------------------ cleanup and atomicity
def test_commit_failing_after_the_rename_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    first, (model, opt) = _saved_plain(root)
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(str(dst)) == "latest":
            raise OSError(errno.EIO, "injected I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected I/O error"):
        checkpoint.save(str(root), model=model, optimizer=opt, step=2)
    monkeypatch.undo()
    assert sorted(os.listdir(root)) == ["latest", "v000001"]
    assert checkpoint.load(str(root), model=cases.Net(4)) == {"step": 1}


def test_next_save_removes_leftovers_of_a_killed_save(tmp_path):
    root = tmp_path / "ckpt"
    _, (model, opt) = _saved_plain(root)
    (root / "v000002.tmp-0123abcd").mkdir()
    (root / "v000002.tmp-0123abcd" / "params.float32.rank0.npy").write_bytes(b"partial")
    (root / "latest.tmp-89abcdef").write_text("v000002\n")
    (root / "v000007").mkdir()  # renamed but never pointed at: the commit died
    (root / "notes.txt").write_text("the user's")  # not ours: kept
    version = checkpoint.save(str(root), model=model, optimizer=opt, keep_last=0)
    assert os.path.basename(version) == "v000002"
    assert sorted(os.listdir(root)) == ["latest", "notes.txt", "v000001", "v000002"]


def test_enospc_while_writing_names_the_file(tmp_path, monkeypatch):
    model = ddp.nn.Linear(2, 3)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        checkpoint.save(str(tmp_path), model=model)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert info.value.errno == errno.ENOSPC
    assert "no space left on device (ENOSPC) writing" in str(info.value), str(info.value)
    assert "weight.npy" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_fifo_is_refused_without_hanging(tmp_path):
    model = ddp.nn.Linear(2, 3)
    version = checkpoint.save(str(tmp_path), model=model)
    weight = os.path.join(version, "model", "weight.npy")
    os.remove(weight)
    os.mkfifo(weight)
    assert "not a regular file" in _load_error(tmp_path, model=model, with_opt=False)
