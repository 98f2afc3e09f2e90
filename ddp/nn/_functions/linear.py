"""``linear`` and ``embedding`` as single graph nodes (one GEMM / one gather each way)."""

from __future__ import annotations

from ddp import kernels
from ddp.autograd.function import Function
from ddp.backend import get_array_module
from ddp.ops._util import reshape_fresh


class _GraphView:
    """A node of torch's graph that ddp fuses away, shown by ``next_functions`` only: it has
    torch's name and the edges torch's node has, and never runs."""

    def __init__(self, name: str, next_functions: tuple) -> None:
        self._name = name
        self.next_functions = next_functions

    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<{self._name} object at {id(self):#x}>"


class Linear(Function):
    """``y = x @ W.T + b`` over the last dim of ``x``; all leading dims fold into one GEMM.

    One node here; torch records ``addmm(b, x, W.t())`` (``mm`` without bias), wrapped in views
    for inputs of other than 2 dims. ``name()`` and ``next_functions`` show torch's nodes, so
    code that walks ``grad_fn.next_functions`` (the 60-minute blitz) sees torch's graph.
    """

    def name(self) -> str:
        if len(self.x_shape) != 2:
            return "ViewBackward0"
        return "AddmmBackward0" if self.has_bias else "MmBackward0"

    @property
    def next_functions(self) -> tuple:
        x, w, b = super().next_functions
        weight_t = (_GraphView("TBackward0", (w,)), 0) if w[0] is not None else (None, 0)
        if len(self.x_shape) == 2:
            return (b, x, weight_t) if self.has_bias else (x, weight_t)
        x = (_GraphView("ViewBackward0", (x,)), 0) if x[0] is not None else (None, 0)
        inner = (b, x, weight_t) if self.has_bias else (x, weight_t)
        return ((_GraphView("AddmmBackward0" if self.has_bias else "MmBackward0", inner), 0),)

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])  # views cost on a GPU: skip
        out = kernels.matmul(x2, weight.T)
        if bias is not None:
            out += bias
        needs = ctx.needs_input_grad
        ctx.save_for_backward(x2 if needs[1:2] == (True,) else None,
                              weight if needs[:1] == (True,) else None)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return out if x.ndim == 2 else out.reshape(x.shape[:-1] + (weight.shape[0],))

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g2 = grad if grad.ndim == 2 else grad.reshape(-1, grad.shape[-1])
        gx = None
        if needs[0]:
            gx = kernels.matmul(g2, weight)
            gx = gx if grad.ndim == 2 else gx.reshape(ctx.x_shape)
        gw = gb = None
        if needs[1]:  # written straight into the weight's .grad memory where it has one
            gw = kernels.matmul(g2.T, x2, out=ctx.gradient_destination(
                1, (g2.shape[1], x2.shape[1]), _product_dtype(g2, x2)))
        if ctx.has_bias and needs[2]:
            gb = kernels.column_sums(g2, out=ctx.gradient_destination(
                2, (g2.shape[1],), g2.dtype))
        return gx, gw, gb


def _product_dtype(a, b):
    return a.dtype if a.dtype == b.dtype else get_array_module(a).result_type(a, b)


class Embedding(Function):
    """Rows of ``weight`` picked by integer ``indices``; backward sums rows per index."""

    @staticmethod
    def forward(ctx, weight, indices, padding_idx):
        ctx.save_for_backward(indices)
        ctx.num_embeddings = weight.shape[0]
        ctx.padding_idx = padding_idx
        return weight[indices]

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        xp = get_array_module(grad)
        flat = indices.reshape(-1)
        g = grad.reshape(flat.shape[0], -1)
        shape = (ctx.num_embeddings,) + grad.shape[indices.ndim:]
        dest = ctx.gradient_destination(0, shape, grad.dtype)  # the weight's .grad memory
        if dest is None:
            out = xp.zeros((ctx.num_embeddings, g.shape[1]), dtype=grad.dtype)
        else:
            out = dest.reshape(ctx.num_embeddings, g.shape[1])  # a view: written through
            out[...] = 0
        if flat.shape[0] and xp.__name__ != "numpy":
            xp.add.at(out, flat, g)  # CuPy: an atomic scatter-add, one launch, no host sync
        elif flat.shape[0]:
            # Sort-based segmented sum: one gather, one reduceat, one scatter of unique rows
            # (much faster than add.at, and deterministic).
            order = xp.argsort(flat, kind="stable")
            sorted_idx = flat[order]
            starts = xp.concatenate([xp.zeros(1, dtype=bool), sorted_idx[1:] != sorted_idx[:-1]])
            starts = xp.flatnonzero(starts)
            starts = xp.concatenate([xp.zeros(1, dtype=starts.dtype), starts])
            sums = xp.add.reduceat(g[order], starts, axis=0)
            out[sorted_idx[starts]] = sums
        if ctx.padding_idx is not None:
            out[ctx.padding_idx] = 0
        return (dest if dest is not None else reshape_fresh(out, shape)), None, None
