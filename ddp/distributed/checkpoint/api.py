"""``save`` and ``load``: checkpoints of a model and its (sharded or plain) optimizer.

The index (``index.json``, written by rank 0) describes everything by name, independently of
the world size that wrote it:

* ``spaces``: flat 1-D arrays, e.g. ``params/float32`` or ``state/exp_avg/float32``, laid out
  like ``FlatLayout`` (optimizer order, one space per dtype), each stored as a list of files
  ``{"file", "start", "stop"}`` covering global element ranges (one file per writing rank);
* ``params``: every optimizer parameter's ``space``, global ``offset``, ``shape`` and group;
* ``optimizer``: class, ZeRO stage, param groups (hyperparameters + parameter names), and
  per parameter name and state key either a range of a state space or a scalar;
* ``model``: every ``state_dict`` entry: an optimizer parameter, or a file of its own;
* ``extra``: the JSON-serialisable keyword arguments given to ``save``.

A ZeRO rank writes the slices it owns and, on load at any world size, reads exactly the ranges
of its new slices. A plain optimizer's state is replicated: rank 0 writes it, every rank reads
all of it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from ddp.backend import get_array_module
from ddp.distributed import api
from ddp.distributed.checkpoint import storage
from ddp.distributed.local_backend import LocalProcessGroup
from ddp.distributed.optim.flat_layout import FlatLayout
from ddp.distributed.optim.shard_state import merge_meta
from ddp.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer
from ddp.nn.parallel import DistributedDataParallel
from ddp.tensor import Tensor

FORMAT = "ddp.distributed.checkpoint/1"


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


def _file(space: str, rank: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", space.replace("/", ".")) + f".rank{rank}.npy"


def _jsonable(value: Any, what: str) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except TypeError:
        raise TypeError(f"checkpoint.save: {what} = {value!r} is not JSON-serialisable") from None
    return value


def _scalar_json(value) -> dict:
    if isinstance(value, np.ndarray):
        return {"scalar": value.item(), "dtype": str(value.dtype)}
    return {"scalar": _jsonable(value, "optimizer state scalar"), "dtype": None}


def _scalar_value(info: dict):
    return np.array(info["scalar"], dtype=info["dtype"]) if info["dtype"] else info["scalar"]


def _spaces_for(world: int, space: str, dtype: str, total: int, buf=None) -> dict:
    """Rank ``r``'s file holds its pieces of ``buf`` (a ZeRO layout buffer) clipped to
    ``total``, concatenated: one ``{"file", "start", "stop", "offset"}`` per piece (``offset``:
    where the piece starts in the file). Without ``buf``, rank 0's file holds everything."""
    files = []
    for r in range(world):
        pieces = buf.owned(r, world) if buf is not None else [(0, total, 0)]
        offset = 0
        for lo, hi, _ in pieces:
            hi = min(hi, total)
            if lo < hi:
                files.append({"file": _file(space, r), "start": lo, "stop": hi,
                              "offset": offset})
                offset += hi - lo
    return {"dtype": dtype, "numel": total, "files": files}


def _owned_data(buf, rank: int, world: int, shard_array):
    """This rank's pieces of ``shard_array`` (its ``S``-element shard) clipped to the real
    length, concatenated as ``_spaces_for`` lists them; None when it owns only padding."""
    parts = [shard_array[pos:pos + min(hi, buf.total) - lo]
             for lo, hi, pos in buf.owned(rank, world) if lo < min(hi, buf.total)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else get_array_module(parts[0]).concatenate(parts)


def save(directory: str, model=None, optimizer=None, *, process_group=None,
         keep_last: int = 2, **extra: Any) -> str:
    """Collective: write a checkpoint of ``model`` and ``optimizer`` under ``directory``.

    Every rank writes its own files into ``directory/vNNNNNN.tmp-<id>``; once all succeeded,
    rank 0 writes the index, renames the directory to ``vNNNNNN`` and atomically points
    ``directory/latest`` at it; the ``keep_last`` newest versions are kept. If any rank fails,
    every rank raises and the previous checkpoint stays the latest.

    Args:
        directory: the checkpoint root (shared by all ranks).
        model: a Module (a DistributedDataParallel is unwrapped); its ``state_dict`` names
            the parameters.
        optimizer: a ZeroRedundancyOptimizer (each rank writes its slices) or a plain
            optimizer (rank 0 writes its state).
        process_group: for a plain optimizer, the group (default: the default group, or a
            world of one when none is initialised).
        extra: JSON-serialisable values returned by :func:`load` (epoch, step, ...).

    Returns:
        The path of the new checkpoint version.
    """
    pg = _group(optimizer, process_group)
    rank, world = pg.rank(), pg.size()
    module = _unwrap(model)
    index: dict = {"format": FORMAT, "world_size": world, "spaces": {}, "params": {},
                   "model": {}, "optimizer": None,
                   "extra": {k: _jsonable(v, k) for k, v in extra.items()}}
    jobs: list[tuple[str, Any]] = []  # (file name, array) this rank writes
    if optimizer is not None:
        _describe_optimizer(index, jobs, optimizer, _names(module), rank, world)
    if module is not None:
        for name, t in module.state_dict().items():
            if name in index["params"]:
                index["model"][name] = {"param": name}
            else:
                fname = os.path.join("model", re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy")
                index["model"][name] = {"file": fname}
                if rank == 0:
                    jobs.append((fname, t.array))

    tmp = final = None
    if rank == 0:
        tmp, final = storage.begin(directory)
    tmp, final = pg.broadcast_object((tmp, final), 0)
    error = None
    try:
        for fname, array in jobs:
            storage.write_array(os.path.join(tmp, fname), array)
    except Exception as exc:  # every rank must reach the agreement below
        error = f"{type(exc).__name__}: {exc}"
    errors = pg.allgather_object(error)
    if rank == 0 and not any(errors):
        try:
            storage.write_json(os.path.join(tmp, storage.INDEX), index)
            storage.commit(directory, tmp, final, keep_last)
        except Exception as exc:
            errors[0] = f"{type(exc).__name__}: {exc}"
    errors = pg.broadcast_object(errors, 0)
    failed = {r: e for r, e in enumerate(errors) if e}
    if failed:
        if rank == 0:
            storage.abort(tmp)
        raise RuntimeError(
            f"checkpoint.save to {directory!r} failed on rank(s) {sorted(failed)}: "
            + "; ".join(f"rank {r}: {e}" for r, e in failed.items())
            + ". The previous checkpoint (if any) is still the latest."
        )
    return final


def _describe_optimizer(index: dict, jobs: list, optimizer, names: dict, rank: int,
                        world: int) -> None:
    zero = isinstance(optimizer, ZeroRedundancyOptimizer)
    layout = FlatLayout.of_groups(optimizer.param_groups, names, world if zero else 1)
    if zero:  # the optimizer's own buckets decide which pieces a rank owns
        layout.buffers = optimizer.layout.buffers
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for e in layout.entries:
        index["params"][e.name] = {"space": f"params/{e.dtype}", "offset": e.offset,
                                   "shape": list(e.shape), "group": e.group}
    if zero:
        local = optimizer.local_state()
        meta = ({k: str(a.dtype) for k, a in local.slices.items()}, local.group_keys,
                local.scalars)
        dtypes, group_keys, scalars = merge_meta(optimizer.process_group.allgather_object(meta))
        slices = dict(local.slices)
        for d, buf in layout.buffers.items():
            space = f"params/{d}"
            index["spaces"][space] = _spaces_for(world, space, d, buf.total, buf)
            flat = optimizer.flat_params[d]
            shard = get_array_module(flat).concatenate(
                [flat[lo:hi] for lo, hi, _ in buf.owned(rank, world)])
            data = _owned_data(buf, rank, world, shard)
            if data is not None:
                jobs.append((_file(space, rank), data))
        for (d, key), sdtype in dtypes.items():
            buf = layout.buffers[d]
            space = f"state/{key}/{d}"
            index["spaces"][space] = _spaces_for(world, space, sdtype, buf.total, buf)
            mine = slices.get((d, key))
            data = _owned_data(buf, rank, world,
                               mine if mine is not None else np.zeros(buf.shard, sdtype))
            if data is not None:
                jobs.append((_file(space, rank), data))
        inner_class = optimizer.optimizer_class.__name__
    else:
        group_keys, scalars, state_arrays = {}, {}, {}
        for e, p in zip(layout.entries, params, strict=True):
            for key, value in optimizer.state.get(p, {}).items():
                array = value.array if isinstance(value, Tensor) else None
                if array is not None and array.shape == p.array.shape and array.ndim > 0:
                    keys = group_keys.setdefault(e.group, [])
                    if key not in keys:
                        keys.append(key)
                    state_arrays.setdefault((e.dtype, key), []).append((e, array))
                else:
                    value = np.asarray(storage.to_host(array)) if array is not None else value
                    scalars.setdefault(e.group, {}).setdefault(key, value)
        for d, buf in layout.buffers.items():
            space = f"params/{d}"
            index["spaces"][space] = _spaces_for(1, space, d, buf.total)
            if rank == 0:
                flat = np.concatenate([storage.to_host(params[e.index].array).reshape(-1)
                                       for e in buf.entries])
                jobs.append((_file(space, 0), flat))
        for (d, key), items in state_arrays.items():
            buf = layout.buffers[d]
            space = f"state/{key}/{d}"
            sdtype = str(items[0][1].dtype)
            index["spaces"][space] = _spaces_for(1, space, sdtype, buf.total)
            if rank == 0:
                flat = np.zeros(buf.total, dtype=sdtype)
                for e, array in items:
                    flat[e.offset:e.stop] = storage.to_host(array).reshape(-1)
                jobs.append((_file(space, 0), flat))
        inner_class = type(optimizer).__name__
    state: dict = {}
    for e in layout.entries:
        entry = {key: _scalar_json(v) for key, v in scalars.get(e.group, {}).items()}
        for key in group_keys.get(e.group, []):
            entry[key] = {"space": f"state/{key}/{e.dtype}", "offset": e.offset,
                          "shape": list(e.shape)}
        if zero or optimizer.state.get(params[e.index]):
            state[e.name] = entry
    index["optimizer"] = {
        "class": inner_class,
        "zero_stage": optimizer.stage if zero else None,
        "param_groups": [
            {**{k: _jsonable(v, f"param_groups[{g}][{k!r}]") for k, v in group.items()
                if k != "params"},
             "params": [e.name for e in layout.entries if e.group == g]}
            for g, group in enumerate(optimizer.param_groups)
        ],
        "state": state,
    }


def load(directory: str, model=None, optimizer=None, *, process_group=None) -> dict:
    """Collective: restore ``model`` and ``optimizer`` from the latest checkpoint.

    Works at any world size: a ZeRO rank reads the element ranges of its own slices (from
    whichever files hold them) and all-gathers the parameters; a plain optimizer reads all.

    Returns:
        The ``extra`` values given to :func:`save`.

    Raises:
        FileNotFoundError: no checkpoint under ``directory``.
        ValueError: the model or optimizer does not match the checkpoint (names the entry).
    """
    pg = _group(optimizer, process_group)
    rank = pg.rank()
    path = pg.broadcast_object(storage.latest_dir(directory) if rank == 0 else None, 0)
    with open(os.path.join(path, storage.INDEX)) as f:
        try:
            index = json.load(f)
        except ValueError as exc:
            raise ValueError(f"checkpoint index {f.name!r} is truncated or corrupt "
                             f"({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path!r}: unknown checkpoint format "
                         f"{index.get('format') if isinstance(index, dict) else index!r}")
    reader = storage.Reader(path, index)
    module = _unwrap(model)
    loaded: set[int] = set()
    if optimizer is not None:
        _load_optimizer(reader, index, optimizer, _names(module), rank, pg.size(), loaded)
    if module is not None:
        saved = index["model"]
        for name, t in module.state_dict(keep_vars=True).items():
            if id(t) in loaded:
                continue
            info = saved.get(name)
            if info is None:
                raise ValueError(f"checkpoint {path!r} has no entry for model key {name!r}")
            if "param" in info:
                p = index["params"][info["param"]]
                if tuple(p["shape"]) != tuple(t.shape):
                    # Same element count is not enough: (2, 3) read into (3, 2) scrambles it.
                    raise ValueError(
                        f"checkpoint {path!r} entry {name!r} has shape {tuple(p['shape'])}, "
                        f"the model's tensor has shape {tuple(t.shape)}"
                    )
                numel = int(np.prod(p["shape"], dtype=np.int64))
                array = reader.read(p["space"], p["offset"], p["offset"] + numel)
            else:
                array = reader.read_file(info["file"])
            _assign(t, array, name)
    return dict(index["extra"])


def _assign(t: Tensor, host: np.ndarray, name: str) -> None:
    if host.ndim > 1 and host.shape != t.array.shape:
        raise ValueError(f"checkpoint entry {name!r} has shape {host.shape}, the model's "
                         f"tensor has shape {tuple(t.array.shape)}")
    if host.size != t.array.size:
        raise ValueError(f"checkpoint entry {name!r} has {host.size} elements, the model's "
                         f"tensor of shape {tuple(t.array.shape)} has {t.array.size}")
    xp = get_array_module(t.array)
    t.array[...] = xp.asarray(host.reshape(t.array.shape))


def _load_optimizer(reader: storage.Reader, index: dict, optimizer, names: dict, rank: int,
                    world: int, loaded: set[int]) -> None:
    zero = isinstance(optimizer, ZeroRedundancyOptimizer)
    saved_opt = index["optimizer"]
    if saved_opt is None:
        raise ValueError(f"checkpoint {reader.path!r} holds no optimizer state")
    mine = (optimizer.optimizer_class if zero else type(optimizer)).__name__
    if saved_opt.get("class") not in (None, mine):
        # Loading SGD state into Adam would silently drop it and start Adam from scratch.
        raise ValueError(
            f"checkpoint {reader.path!r} holds the state of a {saved_opt['class']} optimizer, "
            f"cannot load it into {mine}"
        )
    layout = FlatLayout.of_groups(optimizer.param_groups, names, world if zero else 1)
    for e in layout.entries:
        info = index["params"].get(e.name)
        if info is None or info["space"] != f"params/{e.dtype}" or \
                tuple(info["shape"]) != e.shape or info["offset"] != e.offset:
            raise ValueError(
                f"checkpoint {reader.path!r} does not match the optimizer at parameter "
                f"{e.name!r} ({e.dtype}{list(e.shape)} at offset {e.offset}); saved: {info}"
            )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_state = saved_opt["state"]
    group_keys: dict = {}
    scalars: dict = {}
    for e in layout.entries:
        for key, info in saved_state.get(e.name, {}).items():
            if "space" in info:
                keys = group_keys.setdefault(e.group, [])
                if key not in keys:
                    keys.append(key)
            else:
                scalars.setdefault(e.group, {}).setdefault(key, _scalar_value(info))
    if zero:
        for d, buf in optimizer.layout.buffers.items():
            flat = optimizer.flat_params[d]
            for lo, hi, _ in buf.owned(rank, world):
                flat[lo:hi] = get_array_module(flat).asarray(reader.read(f"params/{d}", lo, hi))

        def read_slice(d, key, lo, hi, like):
            host = reader.read(f"state/{key}/{d}", lo, hi).astype(like.dtype, copy=False)
            return get_array_module(like).asarray(host).copy()

        optimizer.load_local_state(read_slice, group_keys, scalars)
        optimizer.gather_params()
        loaded.update(id(p) for p in params)
    else:
        state = {}
        for e, p in zip(layout.entries, params, strict=True):
            _assign(p, reader.read(f"params/{e.dtype}", e.offset, e.stop), e.name)
            loaded.add(id(p))
            entry = {}
            for key, info in saved_state.get(e.name, {}).items():
                if "space" in info:
                    entry[key] = Tensor(reader.read(info["space"], e.offset, e.stop)
                                        .reshape(e.shape))
                else:
                    value = _scalar_value(info)
                    entry[key] = Tensor(value) if isinstance(value, np.ndarray) else value
            if entry:
                state[e.index] = entry
        groups = [{"params": [e.index for e in layout.entries if e.group == g]}
                  for g in range(len(optimizer.param_groups))]
        optimizer.load_state_dict({"state": state, "param_groups": [
            {**{k: v for k, v in group.items() if k != "params"}, **g}
            for group, g in zip(optimizer.param_groups, groups, strict=True)]})
    for group, saved in zip(optimizer.param_groups, saved_opt["param_groups"], strict=True):
        for k, v in saved.items():
            if k != "params":
                group[k] = tuple(v) if isinstance(group.get(k), tuple) else v
