"""``nn.Parameter``: a leaf tensor that a ``Module`` registers as one of its parameters."""

from __future__ import annotations

from ddp.creation import empty
from ddp.tensor import Tensor


class Parameter(Tensor):
    """A tensor that is a module parameter: assigning it to a module attribute registers it.

    It shares storage with ``data`` (as torch's does) and requires grad by default. Ops on a
    parameter return plain tensors.
    """

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True):
        if data is None:
            data = empty(0)
        if isinstance(data, Tensor):
            data = data.array
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo: dict) -> Parameter:
        if id(self) in memo:
            return memo[id(self)]
        result = Parameter(self.array.copy(), self.requires_grad)
        if self.grad is not None:
            result.grad = Tensor(self.grad.array.copy())
        memo[id(self)] = result
        return result
