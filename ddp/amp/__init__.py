"""Mixed precision (torch's ``torch.amp``): ``GradScaler`` for float16 loss scaling."""

from ddp.amp.grad_scaler import GradScaler

__all__ = ["GradScaler"]
