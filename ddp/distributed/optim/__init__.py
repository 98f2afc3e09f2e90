"""``ddp.distributed.optim``: ZeRO, optimizer state (and gradients) sharded over the ranks."""

from ddp.distributed.optim.flat_layout import FlatLayout
from ddp.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer

__all__ = ["FlatLayout", "ZeroRedundancyOptimizer"]
