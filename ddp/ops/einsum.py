"""``einsum``: Einstein summation over any number of operands, with its gradient.

The equation is first rewritten with one letter per dim (``...`` expanded, the implicit output
made explicit), so forward and backward read the same plain form. The gradient of operand
``k`` is itself an einsum: the output's gradient times every other operand, summed to
``k``'s letters. Letters only ``k`` has are then broadcast (the output does not depend on
them except through ``k``), repeated letters (a diagonal, ``"ii->i"``) put the gradient on the
diagonal, and a dim of size 1 that was broadcast against a larger one is summed back.
"""

from __future__ import annotations

import string

import numpy as np

from ddp.autograd import tensor_type
from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.backend import get_array_module

_LETTERS = string.ascii_uppercase + string.ascii_lowercase  # torch's label order


def _parse(equation: str, shapes: list[tuple]) -> tuple[list[str], str]:
    """Input subscripts (one letter per dim) and the explicit output subscript."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        which = "more" if len(shapes) > len(terms) else "fewer"
        raise RuntimeError(f"einsum(): {which} operands were provided than specified in the "
                           f"equation")
    for ch in eq:
        if ch not in _LETTERS and ch not in ".,->":
            raise RuntimeError(f"einsum(): invalid subscript given at index {eq.index(ch)} in "
                               f"the equation string, subscripts must be in [a-zA-Z]")
    used = set(eq)
    spare = [c for c in reversed(_LETTERS) if c not in used]
    n_ellipsis = 0
    for term, shape in zip(terms, shapes, strict=True):
        named = len(term.replace("...", ""))
        if "..." in term:
            n_ellipsis = max(n_ellipsis, len(shape) - named)
        elif named != len(shape):
            raise RuntimeError(f"einsum(): the number of subscripts in the equation ({named}) "
                               f"does not match the number of dimensions ({len(shape)}) for "
                               f"operand {terms.index(term)} and no ellipsis was given")
    ell = "".join(spare[:n_ellipsis])
    inputs = []
    for term, shape in zip(terms, shapes, strict=True):
        if "..." in term:
            k = len(shape) - len(term.replace("...", ""))
            if k < 0:
                raise RuntimeError(f"einsum(): the number of subscripts in the equation "
                                   f"({len(term) - 3}) is more than the number of dimensions "
                                   f"({len(shape)}) for operand {terms.index(term)}")
            term = term.replace("...", ell[n_ellipsis - k:])
        inputs.append(term)
    if arrow:
        output = rhs.replace("...", ell)
        for ch in output:
            if not any(ch in t for t in inputs):
                raise RuntimeError(f"einsum(): output subscript {ch} does not appear in the "
                                   f"equation for any input operand")
    else:
        counts = {c: sum(t.count(c) for t in inputs) for c in set("".join(inputs))}
        output = ell + "".join(c for c in _LETTERS if counts.get(c) == 1 and c not in ell)
    return inputs, output


def _einsum(xp, expr: str, *arrays):
    # optimize: a contraction order for 3+ operands, and BLAS (tensordot) for products
    if len(arrays) > 1:
        return xp.einsum(expr, *arrays, optimize=True)
    return xp.einsum(expr, *arrays)


class Einsum(Function):
    @staticmethod
    def forward(ctx, inputs, output, *arrays):
        xp = get_array_module(arrays[0])
        sizes: dict = {}
        for term, a in zip(inputs, arrays, strict=True):
            for ch, n in zip(term, a.shape, strict=True):
                known = sizes.get(ch)
                if known is None or known == 1:
                    sizes[ch] = n
                elif n not in (1, known):
                    raise RuntimeError(f"einsum(): operands do not broadcast: subscript {ch} "
                                       f"has size {known} in one operand and {n} in another")
        full = [a if all(sizes[ch] == n for ch, n in zip(term, a.shape, strict=True))
                else xp.broadcast_to(a, tuple(sizes[ch] for ch in term))
                for term, a in zip(inputs, arrays, strict=True)]
        ctx.inputs, ctx.output, ctx.sizes = inputs, output, sizes
        ctx.save_for_backward(*full)
        ctx.shapes = [a.shape for a in arrays]
        return _einsum(xp, ",".join(inputs) + "->" + output, *full)

    @staticmethod
    def backward(ctx, grad):
        full = ctx.saved_tensors
        xp = get_array_module(grad)
        grads = [None, None]
        for k, term in enumerate(ctx.inputs):
            if not ctx.needs_input_grad[k + 2]:
                grads.append(None)
                continue
            grads.append(_operand_grad(xp, ctx, grad, full, k, term))
        return tuple(grads)


def _operand_grad(xp, ctx, grad, full, k: int, term: str):
    others = [t for j, t in enumerate(ctx.inputs) if j != k]
    unique = "".join(dict.fromkeys(term))
    reachable = set(ctx.output).union(*others)
    target = "".join(c for c in unique if c in reachable)
    expr = ",".join([ctx.output] + others) + "->" + target
    g = _einsum(xp, expr, grad, *[a for j, a in enumerate(full) if j != k])
    # letters only this operand has: the gradient does not vary along them
    g = g.reshape(tuple(ctx.sizes[c] if c in target else 1 for c in unique))
    g = xp.broadcast_to(g, tuple(ctx.sizes[c] for c in unique))
    if len(unique) != len(term):  # a repeated letter: the gradient lies on the diagonal
        out = xp.zeros(tuple(ctx.sizes[c] for c in term), dtype=grad.dtype)
        index = tuple(
            xp.arange(ctx.sizes[c]).reshape(
                tuple(-1 if i == unique.index(c) else 1 for i in range(len(unique))))
            for c in term)
        out[index] = g
        g = out
    shape = ctx.shapes[k]
    stretched = tuple(d for d, n in enumerate(shape) if n == 1 and g.shape[d] != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g


@autocast_op("einsum")
def einsum(equation: str, *operands):
    """``torch.einsum(equation, *operands)``; operands may also be given as one list."""
    tensor_class = tensor_type.Tensor
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands:
        raise RuntimeError("einsum(): must provide at least one operand")
    for i, t in enumerate(operands):
        if not isinstance(t, tensor_class):
            raise TypeError(f"einsum(): operand {i} must be a Tensor, got {type(t).__name__}")
    dtype = operands[0].array.dtype
    for t in operands[1:]:
        if t.array.dtype != dtype:
            raise RuntimeError(f"expected scalar type {operands[0].dtype} but found {t.dtype} "
                               f"(einsum operands must share one dtype)")
    inputs, output = _parse(equation, [tuple(t.shape) for t in operands])
    return Einsum.apply(inputs, output, *operands)


_ = np  # NumPy is the reference backend
