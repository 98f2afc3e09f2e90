"""``save`` and ``load``: checkpoints of a model and its (sharded or plain) optimizer.

The index format is described in ``index.py``, the files in ``files.py``, the directories in
``storage.py``. Both functions are collectives made of phases of local work, each ending in an
agreement (``agree.py``): an error on any rank raises the same exception type on every rank,
so no rank is left waiting in a collective the failing one skipped.

Guarantees: every byte read is checked against a SHA-256 (the data files' in the index, the
index's own in its header); nothing outside the checkpoint directory is read; a save either
publishes a complete version or leaves none (the previous one stays ``latest``); a load either
restores everything on every rank or changes nothing (all reads and checks come first).
"""

from __future__ import annotations

import os
import re
from typing import Any

from ddp.backend import get_array_module
from ddp.distributed import api
from ddp.distributed.checkpoint import agree, files, index, optimizer_state, sharded_rows, storage
from ddp.distributed.checkpoint.reader import Reader
from ddp.distributed.local_backend import LocalProcessGroup
from ddp.distributed.optim.flat_layout import Entry
from ddp.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer
from ddp.nn.parallel import DistributedDataParallel
from ddp.tensor import Tensor

FORMAT = index.FORMAT


def _group(optimizer, process_group):
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        return optimizer.process_group
    if process_group is not None or api.is_initialized():
        return api.resolve_group(process_group)
    return LocalProcessGroup()


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def _names(module) -> dict[int, str]:
    return {} if module is None else {id(p): n for n, p in module.named_parameters()}


def _model_file(key: str, used: set[str]) -> str:
    """A plain file name under ``model/`` for state_dict ``key``, unique within ``used``."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:150]
    if not base or not (base[0].isalnum() or base[0] == "_"):
        base = "_" + base
    name, k = f"model/{base}.npy", 1
    while name in used:
        name, k = f"model/{base}.{k}.npy", k + 1
    used.add(name)
    return name


def _describe(module, optimizer, rank: int, world: int, metas: list,
              extra: dict) -> tuple[dict, list]:
    """The index body (without ``files``) and this rank's ``(file, array)`` jobs."""
    body: dict = {"world_size": world, "files": {}, "spaces": {}, "params": {}, "model": {},
                  "optimizer": None,
                  "extra": {k: optimizer_state.jsonable(v, k) for k, v in extra.items()}}
    jobs: list[tuple[str, Any]] = []
    if optimizer is not None:
        optimizer_state.describe(body, jobs, optimizer, _names(module), rank, world, metas)
    elif module is not None and metas[rank] is not None:  # fully sharded, no optimizer
        optimizer_state.describe_model_rows(body, jobs, list(module.parameters()),
                                            _names(module), rank, metas)
    if module is not None:
        used: set[str] = set()
        for key, t in module.state_dict(keep_vars=True).items():
            if key in body["params"]:
                body["model"][key] = {"param": key}
            elif sharded_rows.rows_of(t) is not None:
                raise ValueError(f"fully sharded parameter {key!r} is not in the optimizer: "
                                 "checkpoint.save writes the rows of fully sharded parameters "
                                 "through their optimizer (or save the model without one)")
            else:
                name = _model_file(key, used)
                body["model"][key] = {"file": name}
                if rank == 0:
                    jobs.append((name, t.array))
    return body, jobs


def save(directory: str, model=None, optimizer=None, *, process_group=None,
         keep_last: int = 2, **extra: Any) -> str:
    """Collective: write a checkpoint of ``model`` and ``optimizer`` under ``directory``.

    Must be called on all ranks of the group. Every rank writes its own files into
    ``directory/vNNNNNN.tmp-<id>``; once all succeeded, rank 0 writes the index (with every
    file's SHA-256), renames the directory to ``vNNNNNN`` and atomically points
    ``directory/latest`` at it; the ``keep_last`` newest versions are kept. Leftovers of an
    earlier save that was killed are removed first.

    Args:
        directory: the checkpoint root (shared by all ranks).
        model: a Module (a DistributedDataParallel is unwrapped); its ``state_dict`` names
            the parameters.
        optimizer: a ZeroRedundancyOptimizer (each rank writes its slices) or a plain
            optimizer (rank 0 writes its state).
        process_group: for a plain optimizer, the group (default: the default group, or a
            world of one when none is initialised).
        keep_last: how many versions to keep (0: all).
        extra: JSON-serialisable values returned by :func:`load` (epoch, step, ...).

    Returns:
        The path of the new checkpoint version.

    Raises:
        On every rank, the type of the first failing rank's error, its message prefixed with
        ``"checkpoint.save: rank R: "`` (e.g. OSError with ENOSPC, "no space left on device
        (ENOSPC) writing <file>"). Nothing of the failed save is left; ``latest`` is unchanged.
    """
    pg = _group(optimizer, process_group)
    rank, world = pg.rank(), pg.size()
    what = "checkpoint.save"
    module = _unwrap(model)

    def check() -> tuple | None:
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0:
            raise ValueError(f"keep_last must be an int >= 0, got {keep_last!r}")
        return optimizer_state.local_meta(
            optimizer, module.parameters() if module is not None else ())

    metas = agree.gather(pg, what, check)
    directory = os.fspath(directory)
    made: dict[str, Any] = {}

    def prepare() -> tuple[str, str] | None:
        made["body"], made["jobs"] = _describe(module, optimizer, rank, world, metas, extra)
        if rank != 0:
            return None
        made["tmp"], final = storage.begin(directory)
        return made["tmp"], final

    def write() -> dict:
        return {name: _write(os.path.join(tmp, name), array) for name, array in made["jobs"]}

    def publish() -> None:
        if rank == 0:
            body = made["body"]
            for written in records:
                body["files"].update(written)
            files.write_bytes(os.path.join(tmp, storage.INDEX), index.encode(body))
            storage.commit(directory, tmp, final, keep_last)

    try:
        tmp, final = agree.gather(pg, what, prepare)[0]
        records = agree.gather(pg, what, write)
        agree.run(pg, what, publish)
    except Exception:
        if rank == 0:
            storage.abort(made.get("tmp"))
        raise
    return final


def _write(path: str, array) -> dict:
    """``storage.write_array`` (looked up at call time: tests wrap it to inject failures);
    a wrapper that returns no record costs one read of the file back."""
    try:
        record = storage.write_array(path, array)
    except OSError as exc:
        files.raise_os_error(exc, path)
    return record if record is not None else files.record_of(path)


def load(directory: str, model=None, optimizer=None, *, process_group=None) -> dict:
    """Collective: restore ``model`` and ``optimizer`` from the latest checkpoint.

    Must be called on all ranks of the group. Works at any world size: a ZeRO rank reads the
    element ranges of its own slices (from whichever files hold them) and all-gathers the
    parameters; a plain optimizer reads all. Every file is verified against its SHA-256 and
    every entry checked before anything is modified: a failed load changes nothing.

    Returns:
        The ``extra`` values given to :func:`save`.

    Raises:
        On every rank, the type of the first failing rank's error, its message prefixed with
        ``"checkpoint.load: rank R: "``:
        FileNotFoundError: no checkpoint under ``directory``, or a file of it is missing.
        ValueError: a corrupt file (naming it), an entry that leaves the directory, or a
            model or optimizer that does not match the checkpoint (naming the entry).
    """
    pg = _group(optimizer, process_group)
    rank, world = pg.rank(), pg.size()
    what = "checkpoint.load"
    module = _unwrap(model)

    def find() -> tuple[str, dict] | None:
        if rank != 0:
            return None
        path = storage.latest_dir(os.fspath(directory))
        return path, index.decode(os.path.join(path, storage.INDEX))

    path, body = agree.gather(pg, what, find)[0]
    reader = Reader(path, body)

    def read() -> list:
        loaded: set[int] = set()
        steps = []
        if optimizer is not None:
            steps.append(optimizer_state.plan(reader, optimizer, _names(module), rank, world,
                                              loaded))
        if module is not None:
            steps.append(_plan_model(reader, module, loaded))
        return steps

    steps = agree.run(pg, what, read)
    agree.run(pg, what, lambda: [step() for step in steps])
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.gather_params()
    return dict(body["extra"])


def _plan_model(reader: Reader, module, loaded: set[int]):
    """Check the model's state_dict against the checkpoint and read what it needs."""
    path, body = reader.path, reader.body
    tensors = module.state_dict(keep_vars=True)
    missing = [k for k in tensors if k not in body["model"]]
    unexpected = [k for k in body["model"] if k not in tensors]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not match the model: missing key(s) "
                         f"{missing}, unexpected key(s) {unexpected}")
    values = []
    for key, t in tensors.items():
        if id(t) in loaded:
            continue
        info = body["model"][key]
        if "param" in info:
            p = body["params"][info["param"]]
            saved_shape = tuple(p["shape"])
        else:
            p = None
            saved_shape = tuple(body["files"][info["file"]]["shape"])
        if saved_shape != tuple(t.shape):
            # Same element count is not enough: (2, 3) read into (3, 2) scrambles it.
            raise ValueError(f"checkpoint {path!r} entry {key!r} has shape {saved_shape}, "
                             f"the model's tensor has shape {tuple(t.shape)}")
        rows = sharded_rows.rows_of(t)  # a fully sharded parameter reads only its rows
        if p is not None:
            start = p["offset"]
            lo, hi = (start, start + index.numel(p["shape"])) if rows is None else \
                sharded_rows.element_range(_entry(p, key), rows)
            host = reader.read(p["space"], lo, hi).reshape(t.array.shape)
        else:
            host = reader.file(info["file"])
            if rows is not None:
                host = host.reshape(saved_shape[:1] + (-1,) if saved_shape else (1, -1))[
                    rows[0]:rows[1]].reshape(t.array.shape)
        values.append((t, host))

    def install() -> None:
        for t, host in values:
            _assign(t, host)

    return install


def _entry(info: dict, name: str):
    shape = tuple(info["shape"])
    return Entry(0, name, info["group"], "", shape, info["offset"],
                                 index.numel(info["shape"]))


def _assign(t: Tensor, host) -> None:
    t.array[...] = get_array_module(t.array).asarray(host)
