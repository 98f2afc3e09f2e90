"""``default_collate`` and ``default_convert``: turn a list of samples into a batch, as torch.

Tensors are stacked, NumPy arrays stacked into tensors, Python floats become a float64 tensor
(torch's choice), ints an int64 tensor, bools a bool tensor, strings stay a list; dicts,
namedtuples, tuples and lists are collated field by field (tuples come back as lists).
"""

from __future__ import annotations

import collections.abc
import re
from typing import Any

import numpy as np

from ddp import ops
from ddp.tensor import Tensor

_NOT_NUMERIC = re.compile(r"[SaUO]")
_ERROR = ("default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
          "found {}")


def default_collate(batch: list[Any]) -> Any:
    """Collate a list of samples into a batch; see the module docstring.

    Raises:
        TypeError: an element type that cannot be batched (e.g. an object array), or samples
            whose fields mix types (a tensor in one sample, a number in another).
        RuntimeError: tensors or arrays of different shapes, or sequences of unequal length,
            in one field.
        KeyError: dict samples with different keys.
        ValueError: an empty batch.
    """
    if len(batch) == 0:
        raise ValueError("default_collate: got an empty batch")
    elem = batch[0]
    if isinstance(elem, (Tensor, np.ndarray)):
        kind = type(elem)
        for i, e in enumerate(batch):
            if not isinstance(e, kind):
                raise TypeError(f"default_collate: expected {kind.__name__} as element {i} of "
                                f"the batch (like element 0), but got {type(e).__name__}")
    if isinstance(elem, Tensor):
        return ops.stack(list(batch), 0)
    if isinstance(elem, np.ndarray):
        if _NOT_NUMERIC.search(elem.dtype.str) is not None:
            raise TypeError(_ERROR.format(elem.dtype))
        for i, e in enumerate(batch):
            if e.shape != elem.shape:
                raise RuntimeError(
                    f"default_collate: stack expects each array to be equal size, but got "
                    f"{list(elem.shape)} at entry 0 and {list(e.shape)} at entry {i}"
                )
        return Tensor(np.stack(batch))
    if isinstance(elem, np.generic) and not isinstance(elem, (np.str_, np.bytes_)):
        return Tensor(np.array(batch))
    if isinstance(elem, bool):
        return Tensor(np.array(batch))
    if isinstance(elem, float):
        return Tensor(np.array(batch, dtype=np.float64))
    if isinstance(elem, int):
        return Tensor(np.array(batch, dtype=np.int64))
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        for i, d in enumerate(batch):
            if not isinstance(d, collections.abc.Mapping) or d.keys() != elem.keys():
                got = list(d.keys()) if isinstance(d, collections.abc.Mapping) else type(d)
                raise KeyError(f"default_collate: element {i} of the batch has keys {got}, "
                               f"element 0 has keys {list(elem.keys())}")
        collated = {key: default_collate([d[key] for d in batch]) for key in elem}
        try:
            return type(elem)(collated)
        except TypeError:
            return collated
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(default_collate(list(s)) for s in zip(*batch, strict=True)))
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        if any(len(e) != size for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        fields = [default_collate(list(s)) for s in zip(*batch, strict=True)]
        if isinstance(elem, tuple):
            return fields
        try:
            return type(elem)(fields)
        except TypeError:
            return fields
    raise TypeError(_ERROR.format(type(elem)))


def default_convert(data: Any) -> Any:
    """Turn NumPy arrays and scalars inside ``data`` into tensors (no batching)."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        return data if _NOT_NUMERIC.search(data.dtype.str) else Tensor(data)
    if isinstance(data, np.generic) and not isinstance(data, (np.str_, np.bytes_)):
        return Tensor(np.asarray(data))
    if isinstance(data, collections.abc.Mapping):
        converted = {key: default_convert(value) for key, value in data.items()}
        try:
            return type(data)(converted)
        except TypeError:
            return converted
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        try:
            return type(data)([default_convert(d) for d in data])
        except TypeError:
            return [default_convert(d) for d in data]
    return data
