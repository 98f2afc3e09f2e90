"""Shape and layout ops: transpose, (un)squeeze, expand, split, cat, stack, tril ...

``reshape`` and ``view``, which the ops here build on, live in ``views.py``.
"""

from __future__ import annotations

from ddp.autograd.autocast_mode import autocast_op
from ddp.autograd.function import Function
from ddp.autograd.grad_mode import is_grad_enabled
from ddp.backend import get_array_module
from ddp.ops._util import normalize_dim, shape_arg, unbroadcast
from ddp.ops.misc import Clone
from ddp.ops.promotion import cast_tensor, promote
from ddp.ops.split import split_pieces
from ddp.ops.views import reshape


class Permute(Function):
    returns_view = True  # the result shares the input's memory (see Tensor._check_inplace)
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        inverse = [0] * len(ctx.axes)
        for i, axis in enumerate(ctx.axes):
            inverse[axis] = i
        return grad.transpose(inverse), None


class Expand(Function):
    returns_view = True
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return get_array_module(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, grad):
        return unbroadcast(grad, ctx.shape), None


class Slice(Function):
    """Basic (view) indexing along one or more axes, used by split/chunk/narrow."""

    backward_name = "SliceBackward0"
    returns_view = True

    @staticmethod
    def forward(ctx, a, index):
        ctx.shape = a.shape
        ctx.dtype = a.dtype
        ctx.index = index
        return a[index]

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        out = xp.zeros(ctx.shape, dtype=grad.dtype)
        out[ctx.index] = grad
        return out, None


class Cat(Function):
    @staticmethod
    def forward(ctx, dim, *arrays):
        xp = get_array_module(arrays[0])
        ctx.dim = dim
        ctx.sizes = [a.shape[dim] for a in arrays]
        return xp.concatenate(arrays, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        bounds = []
        total = 0
        for size in ctx.sizes[:-1]:
            total += size
            bounds.append(total)
        return (None, *xp.split(grad, bounds, axis=ctx.dim))


class Stack(Function):
    @staticmethod
    def forward(ctx, dim, *arrays):
        ctx.dim = dim
        return get_array_module(arrays[0]).stack(arrays, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        return (None, *(xp.take(grad, i, axis=ctx.dim) for i in range(grad.shape[ctx.dim])))


class Tri(Function):
    def name(self) -> str:
        return "TrilBackward0" if self.lower else "TriuBackward0"

    @staticmethod
    def forward(ctx, a, diagonal, lower):
        xp = get_array_module(a)
        ctx.diagonal = diagonal
        ctx.lower = lower
        return xp.tril(a, diagonal) if lower else xp.triu(a, diagonal)

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        g = xp.tril(grad, ctx.diagonal) if ctx.lower else xp.triu(grad, ctx.diagonal)
        return g, None, None


class Flip(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        # A copy, as torch's flip: a NumPy flip is a view, which a write would carry to ``a``.
        return get_array_module(a).flip(a, axis=axes).copy(order="K")

    @staticmethod
    def backward(ctx, grad):
        return get_array_module(grad).flip(grad, axis=ctx.axes), None


class Contiguous(Function):
    backward_name = "CloneBackward0"

    @staticmethod
    def forward(ctx, a):
        return get_array_module(a).ascontiguousarray(a)

    @staticmethod
    def backward(ctx, grad):
        return grad


def flatten(a, start_dim=0, end_dim=-1):
    if a.ndim == 0:
        return reshape(a, 1)
    s = normalize_dim(start_dim, a.ndim)
    e = normalize_dim(end_dim, a.ndim)
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    if s == e:  # torch returns the tensor itself
        return a
    shape = a.array.shape
    return reshape(a, shape[:s] + (-1,) + shape[e + 1:])


def unflatten(a, dim, sizes):
    d = normalize_dim(dim, a.ndim)
    shape = a.array.shape
    return reshape(a, shape[:d] + tuple(sizes) + shape[d + 1:])


def permute(a, *dims):
    axes = tuple(normalize_dim(d, a.ndim) for d in shape_arg(dims))
    if sorted(axes) != list(range(a.ndim)):
        raise RuntimeError(
            f"permute(): dims {list(dims)} are not a permutation of the {a.ndim} dimensions"
        )
    return Permute.apply(a, axes)


def transpose(a, dim0, dim1):
    if a.ndim < 2 and dim0 in (0, -1) and dim1 in (0, -1):
        return Permute.apply(a, tuple(range(a.ndim)))
    d0, d1 = normalize_dim(dim0, a.ndim), normalize_dim(dim1, a.ndim)
    axes = list(range(a.ndim))
    axes[d0], axes[d1] = axes[d1], axes[d0]
    return Permute.apply(a, tuple(axes))


def t(a):
    if a.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {a.ndim}D")
    return transpose(a, 0, 1) if a.ndim == 2 else Permute.apply(a, tuple(range(a.ndim)))


def unsqueeze(a, dim):
    d = normalize_dim(dim, a.ndim + 1)
    shape = a.array.shape
    return reshape(a, shape[:d] + (1,) + shape[d:])


def squeeze(a, dim=None):
    shape = a.array.shape
    if dim is None:
        return reshape(a, tuple(s for s in shape if s != 1))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    axes = {normalize_dim(d, a.ndim) for d in dims} if a.ndim else set()
    return reshape(a, tuple(s for i, s in enumerate(shape) if not (i in axes and s == 1)))


def expand(a, *sizes):
    sizes = shape_arg(sizes)
    shape = a.array.shape
    if len(sizes) < len(shape):
        raise RuntimeError(
            f"expand: the number of sizes provided ({len(sizes)}) must be greater or equal to "
            f"the number of dimensions in the tensor ({len(shape)})"
        )
    lead = len(sizes) - len(shape)
    target = []
    for i, size in enumerate(sizes):
        own = shape[i - lead] if i >= lead else None
        if size == -1:
            if own is None:
                raise RuntimeError("expand: -1 is not allowed in a leading, non-existing dimension")
            size = own
        elif own is not None and own != 1 and own != size:
            raise RuntimeError(
                f"The expanded size of the tensor ({size}) must match the existing size ({own}) "
                f"at non-singleton dimension {i}. Target sizes: {list(sizes)}. Tensor sizes: "
                f"{list(shape)}"
            )
        target.append(size)
    return Expand.apply(a, tuple(target))


def expand_as(a, other):
    return expand(a, other.shape)


def broadcast_to(a, shape):
    return expand(a, shape)


def narrow(a, dim, start, length):
    d = normalize_dim(dim, a.ndim)
    size = a.array.shape[d]
    if not -size <= start <= size:
        raise IndexError(f"start out of range (expected to be in range of [{-size}, {size}], "
                         f"but got {start})")
    if start < 0:
        start += size
    if length < 0:
        raise RuntimeError(f"narrow(): length must be non-negative, got {length}")
    if start + length > size:
        raise RuntimeError(f"start ({start}) + length ({length}) exceeds dimension size "
                           f"({size}) of dimension {d}")
    index = (slice(None),) * d + (slice(start, start + length),)
    return Slice.apply(a, index)


def split(a, split_size_or_sections, dim=0):
    """Split into chunks of ``split_size`` (last one smaller) or of the listed sizes."""
    d = normalize_dim(dim, a.ndim)
    total = a.array.shape[d]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size < 0:
            raise RuntimeError(f"split expects split_size be non-negative, but got "
                               f"split_size={size}")
        if size == 0 and total != 0:
            raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got "
                               f"dimension size of {total}")
        sizes = [min(size, total - start) for start in range(0, total, size or 1)] or [0]
    else:
        sizes = list(split_size_or_sections)
        if any(s < 0 for s in sizes):
            raise RuntimeError(f"split_with_sizes expects split_sizes have only non-negative "
                               f"entries, but got split_sizes={sizes}")
        if sum(sizes) != total:
            raise RuntimeError(
                f"split_with_sizes expects split_sizes to sum exactly to {total} (input tensor's "
                f"size at dimension {d}), but got split_sizes={sizes}"
            )
    if len(sizes) > 1 and a.requires_grad and is_grad_enabled():
        # One node for all pieces: no zero-filled full-size gradient per piece (split.py).
        name = "SplitBackward0" if isinstance(split_size_or_sections, int) else (
            "SplitWithSizesBackward0")
        return split_pieces(a, d, sizes, name)
    out, start = [], 0
    for size in sizes:
        out.append(narrow(a, d, start, size))
        start += size
    return tuple(out)


def chunk(a, chunks, dim=0):
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    d = normalize_dim(dim, a.ndim)
    total = a.array.shape[d]
    if total == 0:  # torch: ``chunks`` empty pieces
        return tuple(narrow(a, d, 0, 0) for _ in range(chunks))
    size = -(-total // chunks)
    return split(a, size, d)


def unbind(a, dim=0):
    d = normalize_dim(dim, a.ndim)
    return tuple(select(a, d, i) for i in range(a.array.shape[d]))


def select(a, dim, index):
    d = normalize_dim(dim, a.ndim)
    size = a.array.shape[d]
    if not -size <= index < size:
        raise IndexError(f"select(): index {index} out of range for tensor of size "
                         f"{list(a.shape)} at dimension {d}")
    return Slice.apply(a, (slice(None),) * d + (index,))


@autocast_op("cat")
def cat(tensors, dim=0):
    """Concatenate along an existing dim; every other dim must match."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    for i, t in enumerate(tensors):
        if t.ndim == 0:
            raise RuntimeError(f"zero-dimensional tensor (at position {i}) cannot be "
                               f"concatenated")
    ref = tensors[0]
    d = normalize_dim(dim, ref.ndim)
    for i, t in enumerate(tensors[1:], start=1):
        if t.ndim != ref.ndim or any(
            t.array.shape[k] != ref.array.shape[k] for k in range(ref.ndim) if k != d
        ):
            raise RuntimeError(
                f"Sizes of tensors must match except in dimension {d}. Expected "
                f"{list(ref.shape)} but got {list(t.shape)} for tensor number {i} in the list."
            )
    tensors = _common_dtype(tensors)
    return Cat.apply(d, *tensors)


concat = cat


@autocast_op("stack")
def stack(tensors, dim=0):
    """Stack along a new dim; all tensors must have the same shape."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    ref = tensors[0]
    for i, t in enumerate(tensors[1:], start=1):
        if t.array.shape != ref.array.shape:
            raise RuntimeError(
                f"stack expects each tensor to be equal size, but got {list(ref.shape)} at entry "
                f"0 and {list(t.shape)} at entry {i}"
            )
    d = normalize_dim(dim, ref.ndim + 1)
    return Stack.apply(d, *_common_dtype(tensors))


def _common_dtype(tensors):
    target = tensors[0].array.dtype
    for t in tensors[1:]:
        target = promote(target, t.array.dtype)
    return [t if t.array.dtype == target else cast_tensor(t, target) for t in tensors]


def tril(a, diagonal=0):
    if a.ndim < 2:  # NumPy would broadcast a vector into a matrix
        raise RuntimeError(f"tril: input tensor must have at least 2 dimensions, got shape "
                           f"{tuple(a.shape)}")
    return Tri.apply(a, diagonal, True)


def triu(a, diagonal=0):
    if a.ndim < 2:
        raise RuntimeError(f"triu: input tensor must have at least 2 dimensions, got shape "
                           f"{tuple(a.shape)}")
    return Tri.apply(a, diagonal, False)


def flip(a, dims):
    axes = tuple(normalize_dim(d, a.ndim) for d in (dims if isinstance(dims, (list, tuple))
                                                     else (dims,)))
    for i, d in enumerate(axes):
        if d in axes[:i]:
            raise RuntimeError(f"dim {d} appears multiple times in the list of dims")
    return Flip.apply(a, axes)


def contiguous(a):
    return Contiguous.apply(a)


def repeat(a, *sizes):
    sizes = shape_arg(sizes)
    if len(sizes) < a.ndim:
        raise RuntimeError(
            "Number of dimensions of repeat dims can not be smaller than number of dimensions of "
            "tensor"
        )
    lead = len(sizes) - a.ndim
    if any(r < 0 for r in sizes):
        target = [r * n for r, n in zip(sizes, (1,) * lead + a.array.shape, strict=True)]
        bad = next(t for t in target if t < 0) if any(t < 0 for t in target) else min(sizes)
        raise RuntimeError(f"Trying to create tensor with negative dimension {bad}: {target} "
                           f"(repeat sizes {list(sizes)})")
    x = reshape(a, (1,) * lead + a.array.shape)
    expanded_shape = []
    target_shape = []
    interleaved = []  # (1, s0, 1, s1, ...) expands to (r0, s0, r1, s1, ...), then merges
    for rep, size in zip(sizes, x.array.shape, strict=True):
        expanded_shape += [rep, size]
        interleaved += [1, size]
        target_shape.append(rep * size)
    x = reshape(x, tuple(interleaved))
    x = expand(x, tuple(expanded_shape))
    # Clone, not contiguous(): with every repeat 1 the expanded array is still ``a``'s memory,
    # and torch's repeat always copies.
    return reshape(Clone.apply(x), tuple(target_shape))
