"""DDP communication hooks (torch's ``torch.distributed.algorithms.ddp_comm_hooks``)."""

from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks
from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD_hook

__all__ = ["default_hooks", "powerSGD_hook"]
