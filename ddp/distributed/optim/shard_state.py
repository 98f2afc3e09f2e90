"""Optimizer state of a ZeRO rank as flat slices, and back.

The wrapped optimizer keeps state per *shard parameter* (one per param group and dtype that
intersects this rank's slice). Each state entry shaped like its shard parameter (``exp_avg``,
``momentum_buffer``, ...) is *sharded*: concatenated over this rank's shard parameters it is an
``S``-element shard of a flat state buffer laid out exactly like the parameters (this rank's
pieces in ascending order, see ``FlatLayout``). Anything else
(``step``, a 0-d tensor or a Python number) is a *scalar*, equal for every parameter of a group.

These slices are what checkpoints write and what ``consolidate_state_dict`` all-gathers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddp.backend import get_array_module
from ddp.tensor import Tensor


@dataclass
class ShardParam:
    """A tensor viewing ``[lo, hi)`` (global offsets) of flat buffer ``dtype``, in ``group``;
    it starts at ``pos`` of this rank's ``S``-element shard."""

    tensor: Tensor
    group: int
    dtype: str
    lo: int
    hi: int
    pos: int


@dataclass
class LocalState:
    """One rank's optimizer state as slices.

    Attributes:
        slices: ``(dtype, key) -> S``-element array (this rank's slice of the flat state).
        group_keys: ``group -> sharded keys`` present in that group (in first-seen order).
        scalars: ``group -> {key: value}``, value a NumPy 0-d array or a Python number.
    """

    slices: dict
    group_keys: dict
    scalars: dict


def local_state(shard_params: list[ShardParam], state: dict, shard: dict) -> LocalState:
    """Collect the wrapped optimizer's ``state`` of ``shard_params`` as this rank's slices.

    Args:
        shard: per dtype, the size ``S`` of this rank's shard (its pieces, ascending).
    """
    slices: dict = {}
    group_keys: dict = {}
    scalars: dict = {}
    for sp in shard_params:
        for key, value in state.get(sp.tensor, {}).items():
            array = value.array if isinstance(value, Tensor) else None
            if array is not None and array.shape == sp.tensor.array.shape:
                out = slices.get((sp.dtype, key))
                if out is None:
                    xp = get_array_module(array)
                    out = slices[(sp.dtype, key)] = xp.zeros(shard[sp.dtype], dtype=array.dtype)
                out[sp.pos:sp.pos + sp.hi - sp.lo] = array
                keys = group_keys.setdefault(sp.group, [])
                if key not in keys:
                    keys.append(key)
            else:
                scalar = np.asarray(_to_host(array)) if array is not None else value
                scalars.setdefault(sp.group, {})[key] = scalar
    return LocalState(slices, group_keys, scalars)


def merge_meta(metas: list[tuple[dict, dict, dict]]) -> tuple[dict, dict, dict]:
    """Merge every rank's ``(keys_by_dtype, group_keys, scalars)`` (ranks may lack a group)."""
    dtypes: dict = {}
    group_keys: dict = {}
    scalars: dict = {}
    for keys_by_dtype, gkeys, sc in metas:
        for key, dtype in keys_by_dtype.items():
            dtypes.setdefault(key, dtype)
        for g, keys in gkeys.items():
            merged = group_keys.setdefault(g, [])
            merged.extend(k for k in keys if k not in merged)
        for g, values in sc.items():
            scalars.setdefault(g, dict(values))
    return dtypes, group_keys, scalars


def install_state(shard_params: list[ShardParam], state: dict, read_slice,
                  group_keys: dict, scalars: dict) -> None:
    """Replace ``state`` (the wrapped optimizer's) from slices.

    Args:
        read_slice: ``read_slice(dtype, key, lo, hi, like) -> array`` of ``hi - lo`` elements
            of the flat state buffer ``key`` for ``dtype``; ``like`` is the shard parameter's
            array (for dtype and device).
        group_keys: sharded keys per group; scalars: ``{key: value}`` per group.
    """
    state.clear()
    for sp in shard_params:
        keys = group_keys.get(sp.group, [])
        values = scalars.get(sp.group, {})
        if not keys and not values:
            continue
        entry = {}
        for key, value in values.items():
            entry[key] = Tensor(np.array(value)) if isinstance(value, np.ndarray) else value
        for key in keys:
            entry[key] = Tensor(read_slice(sp.dtype, key, sp.lo, sp.hi, sp.tensor.array))
        state[sp.tensor] = _torch_order(entry, list(values) + keys)


def _torch_order(entry: dict, order: list) -> dict:
    # Adam's state reads step, exp_avg, exp_avg_sq: keep scalars first, as collected.
    return {key: entry[key] for key in order}


def _to_host(array):
    xp = get_array_module(array)
    return array if xp is np else xp.asnumpy(array)
