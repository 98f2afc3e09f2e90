"""An optimizer (ZeRO-sharded or plain) in a checkpoint index, and back.

Save: :func:`describe` fills the index body's ``spaces``, ``params`` and ``optimizer`` and lists
the arrays this rank writes. A ZeRO rank writes the pieces it owns; a plain optimizer's state is
replicated, so rank 0 writes all of it.

Load: :func:`plan` checks the optimizer against the index (names, groups, shapes, dtypes,
offsets), reads every array this rank needs and returns a function that installs them. Nothing
is modified before every rank has read and checked everything, so a failed load leaves the
optimizer as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ddp.backend import get_array_module
from ddp.distributed.checkpoint import files, sharded_rows
from ddp.distributed.checkpoint.reader import Reader
from ddp.distributed.optim.flat_layout import FlatLayout
from ddp.distributed.optim.shard_state import merge_meta
from ddp.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer
from ddp.tensor import Tensor


def jsonable(value: Any, what: str) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} = {value!r} is not JSON-serialisable") from None
    return value


def space_file(space: str, rank: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", space.replace("/", ".")) + f".rank{rank}.npy"


def _scalar_json(value) -> dict:
    if isinstance(value, np.ndarray):
        return {"scalar": value.item(), "dtype": str(value.dtype)}
    return {"scalar": jsonable(value, "optimizer state scalar"), "dtype": None}


def _scalar_value(info: dict):
    return np.array(info["scalar"], dtype=info["dtype"]) if info["dtype"] else info["scalar"]


def _spaces_for(world: int, space: str, dtype: str, total: int, buf=None) -> dict:
    """Rank ``r``'s file holds its pieces of ``buf`` (a ZeRO layout buffer) clipped to
    ``total``, concatenated: one ``{"file", "start", "stop", "offset"}`` per piece (``offset``:
    where the piece starts in the file). Without ``buf``, rank 0's file holds everything."""
    pieces = []
    for r in range(world):
        owned = buf.owned(r, world) if buf is not None else [(0, total, 0)]
        offset = 0
        for lo, hi, _ in owned:
            hi = min(hi, total)
            if lo < hi:
                pieces.append({"file": space_file(space, r), "start": lo, "stop": hi,
                               "offset": offset})
                offset += hi - lo
    return {"dtype": dtype, "numel": total, "files": pieces}


def _owned_data(buf, rank: int, world: int, shard_array):
    """This rank's pieces of ``shard_array`` (its ``S``-element shard) clipped to the real
    length, concatenated as ``_spaces_for`` lists them; None when it owns only padding."""
    parts = [shard_array[pos:pos + min(hi, buf.total) - lo]
             for lo, hi, pos in buf.owned(rank, world) if lo < min(hi, buf.total)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else get_array_module(parts[0]).concatenate(parts)


def local_meta(optimizer, model_params=()) -> tuple | dict | None:
    """What a rank must tell the others before any can describe the state (no
    communication). ZeRO: its state keys with dtypes, sharded keys per group, scalars. Fully
    sharded parameters (the optimizer's, or ``model_params`` without one): ``{"rows": this
    rank's rows of each parameter, "keys": its state keys}``. Otherwise None."""
    if not isinstance(optimizer, ZeroRedundancyOptimizer):
        params = list(model_params) if optimizer is None else \
            [p for g in optimizer.param_groups for p in g["params"]]
        if not sharded_rows.any_sharded(params):
            return None
        keys = set() if optimizer is None else {
            (str(p.array.dtype), key, str(v.array.dtype))
            for p in params for key, v in optimizer.state.get(p, {}).items()
            if isinstance(v, Tensor) and v.array.ndim > 0 and v.array.shape == p.array.shape}
        return {"rows": [sharded_rows.rows_of(p) for p in params], "keys": sorted(keys)}
    local = optimizer.local_state()
    return ({k: str(a.dtype) for k, a in local.slices.items()}, local.group_keys,
            local.scalars)


def describe(body: dict, jobs: list, optimizer, names: dict, rank: int, world: int,
             metas: list) -> None:
    """Fill ``body`` and append ``(file name, array)`` to ``jobs`` (no communication).

    Args:
        metas: every rank's :func:`local_meta`, in rank order.
    """
    zero = isinstance(optimizer, ZeroRedundancyOptimizer)
    if zero:  # the optimizer's own buckets decide which pieces a rank owns
        layout = FlatLayout.of_groups(optimizer.param_groups, names, world)
        layout.buffers = optimizer.layout.buffers
    else:
        layout = sharded_rows.global_layout(optimizer.param_groups, names)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    rows = None  # fully sharded: every rank's rows of every parameter
    if not zero and metas[rank] is not None:
        rows = [m["rows"] for m in metas]
        if any(m["keys"] != metas[0]["keys"] for m in metas):
            raise ValueError("fully sharded optimizer: the ranks hold different state keys: "
                             + "; ".join(f"rank {r}: {m['keys']}" for r, m in enumerate(metas)))
    for e in layout.entries:
        body["params"][e.name] = {"space": f"params/{e.dtype}", "offset": e.offset,
                                  "shape": list(e.shape), "group": e.group}
    if zero:
        dtypes, group_keys, scalars = merge_meta(metas)
        slices = dict(optimizer.local_state().slices)
        for d, buf in layout.buffers.items():
            space = f"params/{d}"
            body["spaces"][space] = _spaces_for(world, space, d, buf.total, buf)
            flat = optimizer.flat_params[d]
            shard = get_array_module(flat).concatenate(
                [flat[lo:hi] for lo, hi, _ in buf.owned(rank, world)])
            data = _owned_data(buf, rank, world, shard)
            if data is not None:
                jobs.append((space_file(space, rank), data))
        for (d, key), sdtype in dtypes.items():
            buf = layout.buffers[d]
            space = f"state/{key}/{d}"
            body["spaces"][space] = _spaces_for(world, space, sdtype, buf.total, buf)
            mine = slices.get((d, key))
            data = _owned_data(buf, rank, world,
                               mine if mine is not None else np.zeros(buf.shard, sdtype))
            if data is not None:
                jobs.append((space_file(space, rank), data))
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
                    value = np.asarray(files.to_host(array)) if array is not None else value
                    scalars.setdefault(e.group, {}).setdefault(key, value)
        for d, buf in layout.buffers.items():
            space = f"params/{d}"
            if rows is not None:
                describe_rows(body, jobs, space, d, buf, rows, rank,
                              [p.array for p in params])
                continue
            body["spaces"][space] = _spaces_for(1, space, d, buf.total)
            if rank == 0:
                flat = np.concatenate([files.to_host(params[e.index].array).reshape(-1)
                                       for e in buf.entries])
                jobs.append((space_file(space, 0), flat))
        for (d, key), items in state_arrays.items():
            buf = layout.buffers[d]
            space = f"state/{key}/{d}"
            sdtype = str(items[0][1].dtype)
            if rows is not None:
                arrays = [None] * len(params)
                for e, array in items:
                    arrays[e.index] = array
                describe_rows(body, jobs, space, sdtype, buf, rows, rank, arrays)
                continue
            body["spaces"][space] = _spaces_for(1, space, sdtype, buf.total)
            if rank == 0:
                flat = np.zeros(buf.total, dtype=sdtype)
                for e, array in items:
                    flat[e.offset:e.stop] = files.to_host(array).reshape(-1)
                jobs.append((space_file(space, 0), flat))
        inner_class = type(optimizer).__name__
    state: dict = {}
    for e in layout.entries:
        entry = {key: _scalar_json(v) for key, v in scalars.get(e.group, {}).items()}
        for key in group_keys.get(e.group, []):
            entry[key] = {"space": f"state/{key}/{e.dtype}", "offset": e.offset,
                          "shape": list(e.shape)}
        if zero or optimizer.state.get(params[e.index]):
            state[e.name] = entry
    body["optimizer"] = {
        "class": inner_class,
        "zero_stage": optimizer.stage if zero else None,
        "param_groups": [
            {**{k: jsonable(v, f"param_groups[{g}][{k!r}]") for k, v in group.items()
                if k != "params"},
             "params": [e.name for e in layout.entries if e.group == g]}
            for g, group in enumerate(optimizer.param_groups)
        ],
        "state": state,
    }


def describe_rows(body: dict, jobs: list, space: str, dtype: str, buf, rows: list, rank: int,
                  arrays: list) -> None:
    """A space of fully sharded parameters: every rank's rows (``sharded_rows``)."""
    body["spaces"][space] = sharded_rows.space_entry(space, dtype, buf, rows, space_file)
    data = sharded_rows.local_data(buf, rows[rank], rank, arrays, dtype)
    if data is not None:
        jobs.append((space_file(space, rank), data))


def describe_model_rows(body: dict, jobs: list, params: list, names: dict, rank: int,
                        metas: list) -> None:
    """A model saved without its optimizer whose parameters are fully sharded: the
    parameters go into ``params`` spaces (one group) as an optimizer's would, row by row."""
    layout = sharded_rows.global_layout([{"params": params}], names)
    rows = [m["rows"] for m in metas]
    for e in layout.entries:
        body["params"][e.name] = {"space": f"params/{e.dtype}", "offset": e.offset,
                                  "shape": list(e.shape), "group": 0}
    for d, buf in layout.buffers.items():
        describe_rows(body, jobs, f"params/{d}", d, buf, rows, rank, [p.array for p in params])


def _check_layout(reader: Reader, saved_opt: dict, optimizer, layout: FlatLayout) -> None:
    """The optimizer must be the one the checkpoint describes: class, groups, parameters."""
    zero = isinstance(optimizer, ZeroRedundancyOptimizer)
    path, params = reader.path, reader.body["params"]
    mine = (optimizer.optimizer_class if zero else type(optimizer)).__name__
    if saved_opt["class"] != mine:
        # Loading SGD state into Adam would silently drop it and start Adam from scratch.
        raise ValueError(f"checkpoint {path!r} holds the state of a {saved_opt['class']} "
                         f"optimizer, cannot load it into {mine}")
    if len(saved_opt["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"checkpoint {path!r} has {len(saved_opt['param_groups'])} param "
                         f"groups, the optimizer has {len(optimizer.param_groups)}")
    for e in layout.entries:
        info = params.get(e.name)
        if info is None or info["space"] != f"params/{e.dtype}" or \
                tuple(info["shape"]) != e.shape or info["offset"] != e.offset or \
                info["group"] != e.group or \
                reader.body["spaces"][info["space"]]["dtype"] != e.dtype:
            raise ValueError(
                f"checkpoint {path!r} does not match the optimizer at parameter {e.name!r} "
                f"({e.dtype}{list(e.shape)} at offset {e.offset} in group {e.group}); "
                f"saved: {info}")
    unexpected = sorted(set(params) - {e.name for e in layout.entries})
    if unexpected:
        raise ValueError(f"checkpoint {path!r} holds parameters the optimizer does not have: "
                         f"{unexpected}")
    for key in saved_opt["state"]:
        if key not in params:
            raise ValueError(f"checkpoint {path!r}: optimizer state for unknown parameter "
                             f"{key!r}")


def plan(reader: Reader, optimizer, names: dict, rank: int, world: int,
         loaded: set[int]) -> Callable[[], None]:
    """Check ``optimizer`` against the checkpoint and read what this rank needs (no
    communication, nothing modified); returns the function that installs it (no
    communication either; a ZeRO optimizer must then ``gather_params()``).

    Args:
        loaded: receives ``id()`` of every parameter the optimizer restores.

    Raises:
        ValueError: naming the checkpoint and the entry that does not match.
    """
    saved_opt = reader.body["optimizer"]
    if saved_opt is None:
        raise ValueError(f"checkpoint {reader.path!r} holds no optimizer state")
    zero = isinstance(optimizer, ZeroRedundancyOptimizer)
    layout = FlatLayout.of_groups(optimizer.param_groups, names, world) if zero else \
        sharded_rows.global_layout(optimizer.param_groups, names)
    _check_layout(reader, saved_opt, optimizer, layout)
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
    hyper = [{k: v for k, v in saved.items() if k != "params"}
             for saved in saved_opt["param_groups"]]
    if zero:
        install = _plan_zero(reader, optimizer, layout, group_keys, scalars, rank, world)
    else:
        install = _plan_plain(reader, optimizer, layout, params, saved_state)
    loaded.update(id(p) for p in params)

    def apply() -> None:
        install()
        for group, saved in zip(optimizer.param_groups, hyper, strict=True):
            for k, v in saved.items():
                group[k] = tuple(v) if isinstance(group.get(k), tuple) else v

    return apply


def _plan_zero(reader: Reader, optimizer, layout: FlatLayout, group_keys: dict, scalars: dict,
               rank: int, world: int) -> Callable[[], None]:
    pieces: dict[tuple[str, str], list] = {}  # (dtype, space) -> [(lo, hi, host array)]
    needed = {(e.dtype, key) for e in layout.entries for key in group_keys.get(e.group, [])}
    for d, buf in optimizer.layout.buffers.items():
        owned = buf.owned(rank, world)
        spaces = [f"params/{d}"] + [f"state/{key}/{dd}" for dd, key in needed if dd == d]
        for space in spaces:
            pieces[(d, space)] = [(lo, hi, reader.read(space, lo, hi)) for lo, hi, _ in owned]

    def read_slice(d, key, lo, hi, like):
        for plo, phi, host in pieces[(d, f"state/{key}/{d}")]:
            if plo <= lo and hi <= phi:
                host = host[lo - plo:hi - plo].astype(like.dtype, copy=False)
                return get_array_module(like).asarray(host).copy()
        raise RuntimeError(f"state range [{lo}, {hi}) of {key!r} {d} is not "
                           "in one of this rank's pieces")  # the layout guarantees it is

    def install() -> None:
        for d, _ in optimizer.layout.buffers.items():
            flat = optimizer.flat_params[d]
            for lo, hi, host in pieces[(d, f"params/{d}")]:
                flat[lo:hi] = get_array_module(flat).asarray(host)
        optimizer.load_local_state(read_slice, group_keys, scalars)

    return install


def _plan_plain(reader: Reader, optimizer, layout: FlatLayout, params: list,
                saved_state: dict) -> Callable[[], None]:
    values, state = [], {}
    for e in layout.entries:  # a fully sharded parameter reads only its rows
        rows, shape = sharded_rows.rows_of(params[e.index]), params[e.index].array.shape
        values.append(sharded_rows.read_rows(reader, f"params/{e.dtype}", e, rows)
                      .reshape(shape))
        entry = {}
        for key, info in saved_state.get(e.name, {}).items():
            if "space" in info:
                entry[key] = Tensor(sharded_rows.read_rows(reader, info["space"], e, rows)
                                    .reshape(shape))
            else:
                value = _scalar_value(info)
                entry[key] = Tensor(value) if isinstance(value, np.ndarray) else value
        if entry:
            state[e.index] = entry
    groups = [{**{k: v for k, v in group.items() if k != "params"},
               "params": [e.index for e in layout.entries if e.group == g]}
              for g, group in enumerate(optimizer.param_groups)]

    def install() -> None:
        for p, host in zip(params, values, strict=True):
            p.array[...] = get_array_module(p.array).asarray(host)
        optimizer.load_state_dict({"state": state, "param_groups": groups})

    return install
