"""``torch.autograd.Variable``, torch's pre-0.4 wrapper: since 0.4 every tensor is one."""

from __future__ import annotations

from ddp.autograd import tensor_type


def Variable(data, requires_grad: bool = False,  # noqa: N802 - torch's name
             volatile: bool = False) -> tensor_type.Tensor:
    """``torch.autograd.Variable``: since torch 0.4 a tensor is a Variable; returns a leaf
    sharing ``data``'s memory, requiring grad when asked (``volatile`` is ignored, as torch)."""
    if not isinstance(data, tensor_type.Tensor):
        raise TypeError(f"Variable data has to be a tensor, but got {type(data).__name__}")
    return data.detach().requires_grad_(requires_grad)
