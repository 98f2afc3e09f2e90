"""``ShardedParameter``: a parameter whose storage is this rank's dim-0 shard.

The design keeps every optimizer unchanged: ddp's optimizers read and update ``p.array`` and
``p.grad.array`` in place, so the array of a sharded parameter *is* its local shard (rows
``shard_spec.row_start:row_stop``) and its ``.grad`` is the matching shard of the averaged
gradient. An optimizer built on ``model.parameters()`` after ``fully_shard`` therefore holds
exactly the local shard's state. Only the metadata speaks of the whole parameter, as torch's
DTensor does: ``shape``, ``size()``, ``numel()``, ``nelement()``, ``dim()`` and ``ndim`` are
global. Everything computed from the array (``p.data``, ``p.detach()``, ops on ``p``) is local;
forward never sees this object (the unit registers the unsharded parameter while it runs).
"""

from __future__ import annotations

import copy
import math

from ddp.backend import get_array_module
from ddp.distributed.fsdp.shard_layout import ShardSpec, chunk_rows
from ddp.nn.parameter import Parameter
from ddp.tensor import Size, Tensor


class ShardedParameter(Parameter):
    """This rank's shard of a fully sharded parameter (see the module docstring).

    Args:
        local: the shard's array (shape ``(row_stop - row_start, *global_shape[1:])``).
        spec: the global shape and the rows held here.
        process_group: the ranks that hold the other shards.
        requires_grad: as the unsharded parameter's.
    """

    def __init__(self, local, spec: ShardSpec, process_group, requires_grad: bool = True):
        super().__init__(local, requires_grad=requires_grad)
        self._spec = spec
        self.process_group = process_group

    # ------------------------------------------------------------------ global metadata
    @property
    def shard_spec(self) -> ShardSpec:
        """``(global_shape, row_start, row_stop)`` of this rank's shard (padding excluded)."""
        return self._spec

    @property
    def shape(self) -> Size:
        return Size(self._spec.global_shape)

    def size(self, dim: int | None = None):
        if dim is None:
            return Size(self._spec.global_shape)
        return self._spec.global_shape[dim]

    def numel(self) -> int:
        return math.prod(self._spec.global_shape)

    def nelement(self) -> int:
        return self.numel()

    @property
    def ndim(self) -> int:
        return len(self._spec.global_shape)

    def dim(self) -> int:
        return len(self._spec.global_shape)

    # ------------------------------------------------------------------------ the data
    def to_local(self) -> Tensor:
        """The local shard: a tensor sharing this parameter's storage (what the optimizer
        updates in place)."""
        return Tensor._from_op(self.array, None)

    def full_tensor(self) -> Tensor:
        """Collective (call it on every rank of ``process_group``): the whole parameter.

        Returns:
            A new tensor of the global shape on every rank (no graph).
        """
        shape = self._spec.global_shape
        rows = shape[0] if shape else 1
        row_elems = math.prod(shape[1:]) if shape else 1
        world = self.process_group.size()
        padded = chunk_rows(rows, world) * row_elems
        xp = get_array_module(self.array)
        local = self.array.reshape(-1)
        send = xp.zeros(padded, dtype=local.dtype)
        send[:local.size] = local
        out = xp.empty(padded * world, dtype=local.dtype)
        self.process_group.allgather(out, send)
        # Every chunk is padded to the same rows, so the padding is exactly the rows past the
        # end: the first ``rows`` rows of the concatenation are the parameter.
        return Tensor(out[:rows * row_elems].reshape(shape).copy())

    def __repr__(self) -> str:
        s = self._spec
        return (f"ShardedParameter(global_shape={list(s.global_shape)}, rows="
                f"[{s.row_start}, {s.row_stop}), local=\n{Tensor.__repr__(self)})")

    def __deepcopy__(self, memo: dict) -> ShardedParameter:
        if id(self) in memo:
            return memo[id(self)]
        result = ShardedParameter(self.array.copy(), self._spec, self.process_group,
                                  self.requires_grad)
        if self.grad is not None:
            result.grad = Tensor(self.grad.array.copy())
        memo[id(self)] = result
        return result

    def __copy__(self):
        return copy.deepcopy(self)
