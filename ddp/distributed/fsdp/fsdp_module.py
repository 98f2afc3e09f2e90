"""``FSDPModule``: the class ``fully_shard`` mixes into a module's class (torch FSDP2's)."""

from __future__ import annotations


class UnshardHandle:
    """What ``unshard(async_op=True)`` returns; ddp's all-gather already completed."""

    def wait(self) -> None:
        """Nothing to wait for (the all-gather ran synchronously)."""


class FSDPModule:
    """Methods of a module after ``fully_shard(module)``; its class becomes ``FSDP<Cls>``,
    a subclass of ``FSDPModule`` and of its original class."""

    def _fsdp_units(self, recurse: bool) -> list:
        if not recurse:
            return [self._fsdp_unit]
        return [m._fsdp_unit for m in self.modules() if isinstance(m, FSDPModule)]

    def unshard(self, async_op: bool = False) -> UnshardHandle | None:
        """Collective: all-gather this unit's parameters now (they stay until ``reshard``).

        Must be called on every rank of the unit's group.
        """
        self._fsdp_unit.unshard()
        return UnshardHandle() if async_op else None

    def reshard(self) -> None:
        """Free this unit's gathered parameters; the sharded ones are registered again."""
        self._fsdp_unit.reshard()

    def set_requires_gradient_sync(self, requires_gradient_sync: bool, *,
                                   recurse: bool = True) -> None:
        """With False, backward accumulates unsharded gradients locally, without
        communication; the next synchronised backward reduce-scatters their sum (torch
        FSDP2's gradient accumulation). ddp supports one setting for the whole model."""
        for unit in self._fsdp_units(recurse):
            unit.requires_gradient_sync = bool(requires_gradient_sync)

    def set_reshard_after_forward(self, reshard_after_forward: bool, recurse: bool = True) -> None:
        """Free the gathered parameters after forward (True) or keep them for backward."""
        if not isinstance(reshard_after_forward, bool):
            raise ValueError(f"reshard_after_forward should be a bool, got "
                             f"{type(reshard_after_forward)}")
        for unit in self._fsdp_units(recurse):
            unit.reshard_after_forward = reshard_after_forward

    def gathered_nbytes(self, recurse: bool = False) -> int:
        """Bytes of unsharded parameter storage this unit (``recurse``: and the units below)
        holds right now; 0 when resharded. Not a collective."""
        return sum(unit.gathered_nbytes() for unit in self._fsdp_units(recurse))

    def comm_nbytes(self) -> int:
        """Bytes of gradient reduce-scatter buffers the model of this unit holds right now:
        a unit's staging lives from its first gradient to its reduce-scatter, its reduced shard
        until backward ends, so between steps this is 0. Not a collective."""
        root = self._fsdp_unit.root
        return 0 if root is None else root.strategy.memory_bytes()["comm"]
