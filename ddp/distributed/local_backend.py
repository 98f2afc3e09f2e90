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

    def _verify(self, description: str) -> None:
        pass

    def _allreduce(self, array, op: ReduceOp, desc: str | None) -> None:
        pass  # the reduction of one contribution is itself (AVG divides by 1)

    def _broadcast(self, array, src: int, desc: str | None) -> None:
        pass

    def _allgather(self, out_array, in_array, desc: str | None) -> None:
        out_array.reshape(-1)[...] = in_array.reshape(-1)

    def _reduce_scatter(self, out_array, in_array, op: ReduceOp, desc: str | None) -> None:
        out_array.reshape(-1)[...] = in_array.reshape(-1)

    def _barrier(self, desc: str | None) -> None:
        pass

    def _allgather_object(self, obj: Any, desc: str | None) -> list:
        return [copy.deepcopy(obj)]

    def _broadcast_object(self, obj: Any, src: int, desc: str | None) -> Any:
        return obj

    def _dup(self, desc: str, check_collectives: bool) -> ProcessGroup:
        return LocalProcessGroup(self.name + ".dup", check_collectives=check_collectives)

    def _new_subgroup(self, ranks: list[int], desc: str) -> ProcessGroup | None:
        return LocalProcessGroup(f"group{ranks}")
