"""The ``local`` backend: a world of one rank, where every collective is the identity.

It never imports mpi4py, so single-process programs and tests written for DDP run unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from ddp.distributed.process_group import ProcessGroup
from ddp.distributed.reduce_op import ReduceOp


class LocalProcessGroup(ProcessGroup):
    """A group of one rank (rank 0, size 1)."""

    backend = "local"

    def __init__(self, name: str = "WORLD", *, check_collectives: bool = True):
        super().__init__(0, 1, [0], name, check_collectives=check_collectives)

    def _verify(self, description: str, what: str) -> None:
        pass

    def _allreduce_impl(self, array, op: ReduceOp) -> None:
        pass  # the reduction of one contribution is itself (AVG divides by 1)

    def _broadcast_impl(self, array, src: int) -> None:
        pass

    def _allgather_impl(self, out_array, in_array) -> None:
        out_array.reshape(-1)[...] = in_array.reshape(-1)

    def _reduce_scatter_impl(self, out_array, in_array, op: ReduceOp) -> None:
        out_array.reshape(-1)[...] = in_array.reshape(-1)

    def _barrier_impl(self) -> None:
        pass

    def _allgather_object_impl(self, obj: Any) -> list:
        return [copy.deepcopy(obj)]

    def _broadcast_object_impl(self, obj: Any, src: int) -> Any:
        return obj

    def _dup_impl(self, check_collectives: bool) -> ProcessGroup:
        return LocalProcessGroup(self.name + ".dup", check_collectives=check_collectives)

    def _new_subgroup_impl(self, ranks: list[int], check_collectives: bool) -> ProcessGroup | None:
        return LocalProcessGroup(f"group{ranks}", check_collectives=check_collectives)
