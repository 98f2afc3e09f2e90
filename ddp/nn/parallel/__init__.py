"""Data parallelism: ``DistributedDataParallel`` and its gradient reducer."""

from ddp.nn.parallel.distributed import DistributedDataParallel

__all__ = ["DistributedDataParallel"]
