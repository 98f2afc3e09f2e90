"""Checkpoint failure cases shared by the threads tests (test_checkpoint.py) and the MPI tests
(test_checkpoint_mpi.py): errors on one rank raise the same type on every rank (no hang), the
resume idiom on a first run, corruption that must raise or load bit-equal.

Each ``case_*`` runs on every rank of the default group and asserts on its own rank.
"""

from __future__ import annotations

import os

import numpy as np

import ddp.distributed as dist
from ddp.backend import to_numpy
from ddp.distributed import checkpoint
from ddp.distributed.checkpoint import storage

from ._zero_cases import _build, _replicated_step, params_of, shared_tmpdir


def _state_of(opt) -> dict:
    """A ZeRO rank's optimizer state as host arrays: its slices and its scalars."""
    local = opt.local_state()
    out = {("slice",) + key: to_numpy(a).copy() for key, a in local.slices.items()}
    for g, values in local.scalars.items():
        for key, v in values.items():
            out[("scalar", g, key)] = np.asarray(v).copy()
    return out


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), (what, sorted(a), sorted(b))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


def _saved(world, directory: str):
    """A ZeRO model trained one step and saved to ``directory``; its params and state."""
    model, opt = _build("zero", world, 0)
    _replicated_step(model, opt, 0)
    checkpoint.save(directory, model=model, optimizer=opt, step=1)
    return params_of(model), _state_of(opt)


def case_resume_first_run() -> None:
    """``try: load except FileNotFoundError: start fresh`` takes the same branch on every rank,
    on a first run (rank 0 alone finds no checkpoint) and on the next one."""
    world = dist.get_default_group()
    directory = shared_tmpdir(world)
    for attempt in range(2):
        model, opt = _build("zero", world, 5)
        try:
            extra = checkpoint.load(directory, model=model, optimizer=opt)
        except FileNotFoundError as exc:
            assert attempt == 0, str(exc)
            assert "checkpoint.load: rank 0: no checkpoint in" in str(exc), str(exc)
            extra = {"step": 0}
        if attempt == 0:
            assert extra == {"step": 0}
            expected, _ = _saved(world, directory)
        else:
            assert extra == {"step": 1}
            for mine, ref in zip(params_of(model), expected, strict=True):
                np.testing.assert_array_equal(mine, ref)
    # A model-only load with the same idiom.
    model, _ = _build("plain", world, 9)
    assert checkpoint.load(directory, model=model) == {"step": 1}


def case_save_error_on_rank0() -> None:
    """Creating the version directory fails on rank 0 only (the root is a file): every rank
    raises FileExistsError with rank 0's message, and the group stays usable."""
    world = dist.get_default_group()
    directory = shared_tmpdir(world)
    blocker = os.path.join(directory, "not-a-directory")
    if world.rank() == 0:
        with open(blocker, "w") as f:
            f.write("x")
    world.barrier()
    model, opt = _build("zero", world, 0)
    try:
        checkpoint.save(blocker, model=model, optimizer=opt)
    except FileExistsError as exc:
        assert "checkpoint.save: rank 0:" in str(exc) and "not-a-directory" in str(exc), exc
    else:
        raise AssertionError(f"rank {world.rank()}: save into a file did not raise")
    path = checkpoint.save(directory, model=model, optimizer=opt)
    assert os.path.basename(path) == "v000001"


def case_load_error_on_one_rank(bad: str) -> None:
    """Only one rank meets a bad file (``bad="index"``: rank 0 reads the index; ``"shard"``:
    the last rank reads its own shard): every rank raises ValueError with that rank's message,
    nothing was modified on any rank, and a load after the repair succeeds."""
    world = dist.get_default_group()
    rank, size = world.rank(), world.size()
    directory = shared_tmpdir(world)
    expected, state = _saved(world, directory)
    version = storage.latest_dir(directory)
    name = "index.json" if bad == "index" else f"params.float32.rank{size - 1}.npy"
    target = os.path.join(version, name)
    if rank == 0:
        data = open(target, "rb").read()
        with open(target, "wb") as f:  # one flipped bit in the middle
            f.write(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 4])
                    + data[len(data) // 2 + 1:])
    world.barrier()
    model, opt = _build("zero", world, 5)
    before = params_of(model), _state_of(opt)
    failing = 0 if bad == "index" else size - 1
    try:
        checkpoint.load(directory, model=model, optimizer=opt)
    except ValueError as exc:
        assert f"checkpoint.load: rank {failing}:" in str(exc) and name in str(exc), str(exc)
    else:
        raise AssertionError(f"rank {rank}: the corrupt {name} loaded")
    for mine, ref in zip(params_of(model), before[0], strict=True):
        np.testing.assert_array_equal(mine, ref)  # a failed load changes nothing
    _assert_same(_state_of(opt), before[1], "state after a failed load")
    world.barrier()
    if rank == 0:
        with open(target, "wb") as f:
            f.write(data)
    world.barrier()
    checkpoint.load(directory, model=model, optimizer=opt)
    for mine, ref in zip(params_of(model), expected, strict=True):
        np.testing.assert_array_equal(mine, ref)
    _assert_same(_state_of(opt), state, "state after the repaired load")


def flip_targets(version: str, root: str, index_stride: int, shard_stride: int) -> list:
    """``(path, byte position)`` pairs: a stride of the index's bytes and of every shard's,
    and every byte of ``latest``."""
    targets = []
    for name in sorted(os.listdir(version)):
        path = os.path.join(version, name)
        if os.path.isfile(path):
            stride = index_stride if name == storage.INDEX else shard_stride
            targets += [(path, i) for i in range(0, os.path.getsize(path), stride)]
    latest = os.path.join(root, storage.LATEST)
    targets += [(latest, i) for i in range(os.path.getsize(latest))]
    return targets


def flip(path: str, position: int) -> bytes:
    """Flip bit ``position % 8`` of byte ``position``; returns the original contents."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:position] + bytes([data[position] ^ (1 << position % 8)])
                + data[position + 1:])
    return data


def case_corruption_sweep(index_stride: int, shard_stride: int) -> None:
    """Every flipped bit raises, on every rank alike and naming the flipped file, or loads
    bit-equal; never a wrong value."""
    world = dist.get_default_group()
    rank = world.rank()
    directory = shared_tmpdir(world)
    expected, state = _saved(world, directory)
    version = storage.latest_dir(directory)
    targets = world.broadcast_object(
        flip_targets(version, directory, index_stride, shard_stride) if rank == 0 else None, 0)
    raised = 0
    for path, position in targets:
        original = flip(path, position) if rank == 0 else None
        world.barrier()
        model, opt = _build("zero", world, 5)
        try:
            checkpoint.load(directory, model=model, optimizer=opt)
        except (ValueError, FileNotFoundError) as exc:
            outcome = type(exc).__name__
            assert os.path.basename(path) in str(exc), (path, position, str(exc))
            raised += 1
        else:
            outcome = "loaded"
            for mine, ref in zip(params_of(model), expected, strict=True):
                np.testing.assert_array_equal(mine, ref, err_msg=f"{path}@{position}")
            _assert_same(_state_of(opt), state, f"{path}@{position}")
        outcomes = world.allgather_object(outcome)
        assert len(set(outcomes)) == 1, (path, position, outcomes)
        if rank == 0:
            with open(path, "wb") as f:
                f.write(original)
        world.barrier()
    assert raised >= len(targets) * 9 // 10, (raised, len(targets))
