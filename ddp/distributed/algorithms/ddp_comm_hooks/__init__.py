"""DDP communication hooks (torch's ``torch.distributed.algorithms.ddp_comm_hooks``)."""

from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks

__all__ = ["default_hooks"]
