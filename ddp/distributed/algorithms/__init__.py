"""Distributed training algorithms: ``Join`` for uneven inputs (torch's names)."""

from ddp.distributed.algorithms.join import Join, Joinable, JoinHook

__all__ = ["Join", "JoinHook", "Joinable"]
