"""``split``'s pieces as one multi-output graph node (torch's ``SplitBackward0``).

Recorded as independent slices, each piece's backward would build a zero-filled gradient of
the whole input and the engine would add them up: for attention's ``qkv.split(C, dim=2)``,
three full-size zero fills and two full-size additions where one concatenation suffices. Here
each piece's edge is a small slot node that hands its gradient to the one ``SplitBackward``
node and sends it a 0-d token, so that node runs once, after every piece that received a
gradient, and writes each piece's gradient into its part of the input's gradient; only parts
whose piece got no gradient are zero-filled.
"""

from __future__ import annotations

from ddp.autograd import tensor_type
from ddp.autograd.function import Function, OutputSlot
from ddp.backend import get_array_module


class SplitBackward(Function):
    """The input's node: gathers the pieces' gradients (from their slots) into one array."""

    def __init__(self, shape: tuple, dtype, dim: int, sizes: list[int], edge, name: str):
        super().__init__()
        self.shape, self.dtype, self.dim, self.sizes = shape, dtype, dim, sizes
        self.backward_name = name
        self.needs_input_grad = (True,)
        self.next_edges = (edge,)
        self.pending: list = [None] * len(sizes)

    def receive(self, index: int, grad) -> None:
        """Piece ``index``'s slot hands its gradient over, before this node runs."""
        self.pending[index] = grad

    @staticmethod
    def backward(ctx, token):
        grads, ctx.pending = ctx.pending, [None] * len(ctx.sizes)
        xp = get_array_module(token)
        if all(g is not None for g in grads):
            return (xp.concatenate(grads, axis=ctx.dim),)
        out = xp.empty(ctx.shape, dtype=ctx.dtype)
        index = [slice(None)] * len(ctx.shape)
        start = 0
        for size, g in zip(ctx.sizes, grads, strict=True):
            index[ctx.dim] = slice(start, start + size)
            out[tuple(index)] = 0 if g is None else g
            start += size
        return (out,)




def split_pieces(a, dim: int, sizes: list[int], name: str) -> tuple:
    """The pieces of tensor ``a`` (requiring grad, recording) along ``dim``: views with one node.

    ``name`` is torch's node name (``SplitBackward0`` or ``SplitWithSizesBackward0``).
    """
    tensor_class = tensor_type.Tensor
    array = a.array
    owner = SplitBackward(array.shape, array.dtype, dim, sizes, a._gradient_edge(), name)
    index = [slice(None)] * array.ndim
    pieces, start = [], 0
    for k, size in enumerate(sizes):
        index[dim] = slice(start, start + size)
        slot = OutputSlot(owner, k, returns_view=True)  # the piece shares the input's memory
        pieces.append(tensor_class._from_op(array[tuple(index)], slot))
        start += size
    return tuple(pieces)
