"""The op library: every differentiable function on tensors, one concept per module.

``ddp.Tensor`` methods and the ``ddp.*`` free functions both call into here.
"""

# ruff: noqa: F401  (this module re-exports the op functions)
from ddp.ops.arithmetic import (
    add,
    bmm,
    div,
    floor_divide,
    matmul,
    mm,
    mul,
    neg,
    pow,
    remainder,
    sub,
)
from ddp.ops.compare import (
    all,
    allclose,
    any,
    bitwise_and,
    bitwise_not,
    bitwise_or,
    bitwise_xor,
    eq,
    equal,
    ge,
    gt,
    isfinite,
    isinf,
    isnan,
    le,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    lt,
    ne,
)

# ordering, running sums, einsum, scatter, products, distances, sampling
from ddp.ops.cumulative import cumprod, cumsum
from ddp.ops.distance import cdist
from ddp.ops.einsum import einsum
from ddp.ops.misc import cast, clone, copy_into, full_like_graph, to_device
from ddp.ops.products import addmm, baddbmm, ger, outer
from ddp.ops.reduction import (
    amax,
    amin,
    argmax,
    argmin,
    log_softmax,
    logsumexp,
    max,
    mean,
    min,
    softmax,
    std,
    sum,
    var,
)
from ddp.ops.sampling import multinomial
from ddp.ops.scatter import scatter, scatter_add
from ddp.ops.selection import (
    gather,
    getitem,
    index_put,
    index_select,
    masked_fill,
    maximum,
    minimum,
    normalize_index,
    where,
)
from ddp.ops.shape import (
    broadcast_to,
    cat,
    chunk,
    concat,
    contiguous,
    expand,
    expand_as,
    flatten,
    flip,
    narrow,
    permute,
    repeat,
    select,
    split,
    squeeze,
    stack,
    t,
    transpose,
    tril,
    triu,
    unbind,
    unflatten,
    unsqueeze,
)
from ddp.ops.sorting import argsort, sort, topk
from ddp.ops.unary import (
    abs,
    ceil,
    clamp,
    cos,
    exp,
    floor,
    log,
    relu,
    round,
    rsqrt,
    sigmoid,
    sign,
    sin,
    sqrt,
    tanh,
    trunc,
)
from ddp.ops.views import reshape, view, view_dtype
