"""Every op, forward and backward: against torch (float32) and finite differences (float64).

One line per case: ``C(name, input shapes, fn)`` where ``fn(T, *xs)`` is written once against the
torch API and run with ``T = ddp`` and ``T = torch``; a second lambda is given only where the two
APIs differ. Options: ``low`` draws inputs uniformly from ``[low, low + 1]`` (for log, sqrt ...),
``fd=False`` leaves a case out of the finite differences (ties, where the derivative does not
exist, and float16/32 round trips, too coarse for them); ``nondiff=True`` marks an op whose output
is not differentiable (comparisons, argmax, integer casts): the finite-difference test then asserts
that it builds no graph, and any other op must produce an output that requires grad.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import check_grad, check_torch, ddp_forward, make_inputs

import ddp


def C(name, shapes, fn, torch_fn=None, **opts):  # noqa: N802 - a table row
    return pytest.param(shapes, fn, torch_fn, opts, id=name)


def idx(T, values):
    return T.tensor(np.array(values))


MASK = np.array([[True, False, True, False], [False, False, True, True], [True, True, False,
                                                                          False]])

TIES = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])

CASES = [
    # ---- arithmetic and broadcasting
    C("add", [(3, 4), (3, 4)], lambda T, a, b: a + b),
    C("add_bcast", [(3, 1), (1, 4)], lambda T, a, b: a + b),
    C("add_bcast_rank", [(2, 3, 4), (4,)], lambda T, a, b: a + b),
    C("add_scalar", [(3, 4)], lambda T, a: a + 2.5),
    C("radd_int", [(3, 4)], lambda T, a: 2 + a),
    C("add_alpha", [(3, 4), (4,)], lambda T, a, b: T.add(a, b, alpha=-3)),
    C("sub", [(3, 4), (4,)], lambda T, a, b: a - b),
    C("sub_alpha", [(3, 4), (3, 1)], lambda T, a, b: a.sub(b, alpha=0.5)),
    C("rsub", [(3, 4)], lambda T, a: 1 - a),
    C("mul", [(3, 4), (3, 4)], lambda T, a, b: a * b),
    C("mul_bcast", [(2, 1, 4), (3, 1)], lambda T, a, b: a * b),
    C("mul_self", [(3, 4)], lambda T, a: a * a),
    C("rmul", [(3, 4)], lambda T, a: 3 * a),
    C("div", [(3, 4), (4,)], lambda T, a, b: a / (b * b + 1)),
    C("rdiv", [(3, 4)], lambda T, a: 2 / a, low=0.5),
    C("pow2", [(3, 4)], lambda T, a: a**2),
    C("pow3", [(3, 4)], lambda T, a: a**3),
    C("pow_half", [(3, 4)], lambda T, a: a**0.5, low=0.5),
    C("pow_neg", [(3, 4)], lambda T, a: a**-1.5, low=0.5),
    C("pow_tensor", [(3, 4), (4,)], lambda T, a, b: a**b, low=0.5),
    C("rpow", [(3, 4)], lambda T, a: 2**a),
    C("neg", [(3, 4)], lambda T, a: -a),
    C("matmul_2d", [(3, 4), (4, 5)], lambda T, a, b: a @ b),
    C("matmul_1d_1d", [(4,), (4,)], lambda T, a, b: a @ b),
    C("matmul_1d_2d", [(4,), (4, 5)], lambda T, a, b: a @ b),
    C("matmul_2d_1d", [(3, 4), (4,)], lambda T, a, b: a @ b),
    C("matmul_batched", [(2, 3, 4), (2, 4, 5)], lambda T, a, b: a @ b),
    C("matmul_bcast", [(2, 1, 3, 4), (5, 4, 2)], lambda T, a, b: a @ b),
    C("matmul_3d_2d", [(2, 3, 4), (4, 5)], lambda T, a, b: T.matmul(a, b)),
    C("matmul_2d_3d", [(3, 4), (2, 4, 5)], lambda T, a, b: a @ b),
    C("matmul_3d_1d", [(2, 3, 4), (4,)], lambda T, a, b: a @ b),
    C("matmul_1d_3d", [(4,), (2, 4, 5)], lambda T, a, b: a @ b),
    C("mm", [(3, 4), (4, 2)], lambda T, a, b: T.mm(a, b)),
    C("bmm", [(2, 3, 4), (2, 4, 2)], lambda T, a, b: T.bmm(a, b)),
    # ---- element-wise
    C("exp", [(3, 4)], lambda T, a: a.exp()),
    C("log", [(3, 4)], lambda T, a: T.log(a), low=0.5),
    C("sqrt", [(3, 4)], lambda T, a: a.sqrt(), low=0.5),
    C("rsqrt", [(3, 4)], lambda T, a: T.rsqrt(a), low=0.5),
    C("abs", [(3, 4)], lambda T, a: a.abs()),
    C("tanh", [(3, 4)], lambda T, a: T.tanh(a)),
    C("sigmoid", [(3, 4)], lambda T, a: a.sigmoid()),
    C("sigmoid_tails", [np.array([-100.0, -5.0, 0.0, 5.0, 100.0])], lambda T, a: a.sigmoid()),
    C("relu", [(3, 4)], lambda T, a: a.relu()),
    C("clamp", [(3, 4)], lambda T, a: a.clamp(-0.5, 0.5)),
    C("clamp_min", [(3, 4)], lambda T, a: T.clamp(a, min=0.1)),
    C("clamp_max", [(3, 4)], lambda T, a: a.clamp(max=0.2)),
    C("clamp_tensor", [(3, 4), (4,)], lambda T, a, b: a.clamp(min=b)),
    C("sin", [(3, 4)], lambda T, a: a.sin()),
    C("cos", [(3, 4)], lambda T, a: T.cos(a)),
    C("maximum", [(3, 4), (4,)], lambda T, a, b: T.maximum(a, b)),
    C("minimum", [(3, 4), (3, 1)], lambda T, a, b: a.minimum(b)),
    C("max_binary", [(3, 4), (3, 4)], lambda T, a, b: T.max(a, b)),
    # ---- comparisons and logic (bool results, outside the graph)
    C("lt", [(3, 4), (4,)], lambda T, a, b: a < b, nondiff=True),
    C("le_scalar", [(3, 4)], lambda T, a: a <= 0.1, nondiff=True),
    C("gt", [(3, 4), (3, 4)], lambda T, a, b: a > b, nondiff=True),
    C("ge", [(3, 4)], lambda T, a: a >= 0, nondiff=True),
    C("eq", [(3, 4)], lambda T, a: (a > 0) == (a > 0.5), nondiff=True),
    C("ne", [(3, 4)], lambda T, a: a.round() != 0, nondiff=True),
    C("invert", [(3, 4)], lambda T, a: ~(a > 0), nondiff=True),
    C("and_or", [(3, 4)], lambda T, a: ((a > 0) & (a < 1)) | (a < -1), nondiff=True),
    # ---- reductions
    C("sum", [(3, 4)], lambda T, a: a.sum()),
    C("sum_dim", [(3, 4)], lambda T, a: a.sum(1)),
    C("sum_neg_keep", [(2, 3, 4)], lambda T, a: a.sum(-1, keepdim=True)),
    C("sum_dims", [(2, 3, 4)], lambda T, a: T.sum(a, (0, -1))),
    C("mean", [(3, 4)], lambda T, a: a.mean()),
    C("mean_dims_keep", [(2, 3, 4)], lambda T, a: a.mean((0, 2), keepdim=True)),
    C("mean_neg", [(2, 3, 4)], lambda T, a: a.mean(-2)),
    C("max_all", [(3, 4)], lambda T, a: a.max()),
    C("min_all", [(3, 4)], lambda T, a: T.min(a)),
    C("max_dim", [(3, 4)], lambda T, a: tuple(a.max(1))),
    C("min_dim_keep", [(3, 4)], lambda T, a: tuple(a.min(-2, keepdim=True))),
    C("amax", [(2, 3, 4)], lambda T, a: a.amax((0, 2))),
    C("amin_keep", [(2, 3, 4)], lambda T, a: T.amin(a, -1, keepdim=True)),
    C("amax_ties", [TIES], lambda T, a: a.amax(1), fd=False),
    C("max_all_ties", [TIES], lambda T, a: a.max(), fd=False),
    C("var", [(3, 4)], lambda T, a: a.var()),
    C("var_dim", [(3, 4)], lambda T, a: a.var(1)),
    C("var_biased", [(3, 4)], lambda T, a: T.var(a, 0, unbiased=False)),
    C("var_dims_keep", [(2, 3, 4)], lambda T, a: a.var((0, -1), keepdim=True)),
    C("var_correction0", [(3, 4)], lambda T, a: a.var(-1, correction=0)),
    C("std", [(3, 4)], lambda T, a: a.std()),
    C("std_dim_keep", [(3, 4)], lambda T, a: T.std(a, 1, keepdim=True)),
    C("argmax", [(3, 4)], lambda T, a: a.argmax(), nondiff=True),
    C("argmax_dim", [(3, 4)], lambda T, a: T.argmax(a, 1), nondiff=True),
    C("argmin_keep", [(3, 4)], lambda T, a: a.argmin(-1, keepdim=True), nondiff=True),
    C("logsumexp", [(3, 4)], lambda T, a: T.logsumexp(a, 1)),
    C("logsumexp_dims_keep", [(2, 3, 4)], lambda T, a: a.logsumexp((0, 2), keepdim=True)),
    C("softmax", [(3, 4)], lambda T, a: a.softmax(-1)),
    C("softmax_dim0", [(2, 3, 4)], lambda T, a: T.softmax(a, 0)),
    C("log_softmax", [(3, 4)], lambda T, a: T.log_softmax(a, 1)),
    C("log_softmax_large", [np.array([[1000.0, 0.0, -1000.0]])], lambda T, a: a.log_softmax(1)),
    # ---- shape and layout
    C("reshape", [(3, 4)], lambda T, a: a.reshape(4, 3)),
    C("reshape_infer", [(3, 4)], lambda T, a: T.reshape(a, (-1,))),
    C("view", [(3, 4)], lambda T, a: a.view(2, -1)),
    C("flatten", [(2, 3, 4)], lambda T, a: a.flatten()),
    C("flatten_from1", [(2, 3, 4)], lambda T, a: T.flatten(a, 1)),
    C("unflatten", [(3, 4)], lambda T, a: a.unflatten(1, (2, 2))),
    C("transpose", [(3, 4)], lambda T, a: a.transpose(0, 1)),
    C("transpose_neg", [(2, 3, 4)], lambda T, a: T.transpose(a, -1, 0)),
    C("t", [(3, 4)], lambda T, a: a.t()),
    C("T", [(2, 3, 4)], lambda T, a: a.permute(2, 1, 0) * 1),
    C("permute", [(2, 3, 4)], lambda T, a: a.permute(2, 0, 1)),
    C("permute_tuple", [(2, 3, 4)], lambda T, a: T.permute(a, (1, -1, 0))),
    C("unsqueeze", [(3, 4)], lambda T, a: a.unsqueeze(0)),
    C("unsqueeze_neg", [(3, 4)], lambda T, a: T.unsqueeze(a, -1)),
    C("squeeze", [(3, 1, 4, 1)], lambda T, a: a.squeeze()),
    C("squeeze_dim", [(3, 1, 4, 1)], lambda T, a: a.squeeze(-1)),
    C("squeeze_noop", [(3, 4)], lambda T, a: a.squeeze(0)),
    C("expand", [(3, 1)], lambda T, a: a.expand(2, 3, 4)),
    C("expand_keep", [(3, 1)], lambda T, a: a.expand(-1, 4)),
    C("expand_as", [(1, 4), (3, 4)], lambda T, a, b: a.expand_as(b) * b),
    C("repeat", [(3, 2)], lambda T, a: a.repeat(2, 1, 3)),
    C("split", [(3, 5)], lambda T, a: a.split(2, dim=1)),
    C("split_sizes", [(3, 5)], lambda T, a: T.split(a, [1, 4], 1)),
    C("chunk", [(5, 2)], lambda T, a: a.chunk(3)),
    C("unbind", [(3, 4)], lambda T, a: a.unbind(1)),
    C("narrow", [(3, 5)], lambda T, a: a.narrow(1, 1, 3)),
    C("narrow_neg", [(3, 5)], lambda T, a: a.narrow(-1, -2, 2)),
    C("cat", [(3, 4), (3, 2)], lambda T, a, b: T.cat([a, b], 1)),
    C("cat_neg", [(2, 3), (1, 3)], lambda T, a, b: T.cat((a, b, a), -2)),
    C("stack", [(3, 4), (3, 4)], lambda T, a, b: T.stack([a, b])),
    C("stack_neg", [(3, 4), (3, 4)], lambda T, a, b: T.stack([a, b, a], -1)),
    C("tril", [(4, 4)], lambda T, a: a.tril()),
    C("triu", [(3, 4)], lambda T, a: T.triu(a, 1)),
    C("tril_batched", [(2, 3, 3)], lambda T, a: a.tril(-1)),
    C("flip", [(3, 4)], lambda T, a: a.flip(0)),
    C("flip_dims", [(2, 3, 4)], lambda T, a: T.flip(a, (0, -1))),
    # ---- selection
    C("where", [(3, 4), (4,)], lambda T, a, b: T.where(a > 0, a, b)),
    C("where_scalar", [(3, 4)], lambda T, a: T.where(a > 0, a, 0.0)),
    C("where_method", [(3, 4), (3, 4)], lambda T, a, b: a.where(b > 0, b)),
    C("masked_fill", [(3, 4)], lambda T, a: a.masked_fill(a > 0, 0.5)),
    C("masked_fill_bcast", [(3, 4)], lambda T, a: T.masked_fill(a, idx(T, MASK[0]), -1.0)),
    C("gather", [(3, 4)], lambda T, a: a.gather(1, idx(T, [[0, 0, 2], [1, 3, 3], [2, 1, 0]]))),
    C("gather_dim0", [(3, 4)], lambda T, a: T.gather(a, 0, idx(T, [[0, 0, 2, 2], [1, 1, 1, 0]]))),
    C("index_select", [(3, 4)], lambda T, a: a.index_select(0, idx(T, [2, 0, 2]))),
    C("index_select_neg", [(3, 4)], lambda T, a: T.index_select(a, -1, idx(T, [1, 1, 3]))),
    # ---- indexing (repeated indices must add their gradients)
    C("getitem_int", [(3, 4)], lambda T, a: a[1]),
    C("getitem_neg", [(3, 4)], lambda T, a: a[-1, -2]),
    C("getitem_slice", [(3, 4)], lambda T, a: a[:, 1:3]),
    C("getitem_step", [(3, 5)], lambda T, a: a[..., ::2]),
    C("getitem_none", [(3, 4)], lambda T, a: a[None, 1:, None]),
    C("getitem_list", [(3, 4)], lambda T, a: a[[0, 2, 0]]),
    C("getitem_tensor", [(3, 4)], lambda T, a: a[idx(T, [2, 2, 1, 2])]),
    C("getitem_2d_index", [(3, 4)], lambda T, a: a[idx(T, [[0, 1], [0, 0]])]),
    C("getitem_pairs", [(3, 4)], lambda T, a: a[[0, 2, 0], [1, 1, 1]]),
    C("getitem_mixed", [(3, 4)], lambda T, a: a[1:, [0, 0, 3]]),
    C("getitem_mask", [(3, 4)], lambda T, a: a[idx(T, MASK)]),
    C("getitem_mask_rows", [(3, 4)], lambda T, a: a[idx(T, MASK[:, 0])]),
    C("getitem_scalar_tensor", [(3, 4)], lambda T, a: a[idx(T, 1)]),
    # ---- x[idx] = v recorded in the graph
    C("setitem_value", [(3, 4), (4,)], lambda T, a, b: _setitem(a * 1, 1, b)),
    C("setitem_scalar", [(3, 4)], lambda T, a: _setitem(a * 2, (slice(None), 0), 0.5)),
    C("setitem_bcast", [(3, 4), (3, 1)], lambda T, a, b: _setitem(a + 0, (slice(None), [1, 3]), b)),
    C("setitem_mask", [(3, 4)], lambda T, a: _setitem(a * 1, idx(T, MASK), 0.0)),
    C("setitem_plain_target", [(4,)], lambda T, b: _setitem(T.zeros(3, 4, dtype=b.dtype), 2, b)),
    # ---- casts
    C("double_float", [(3, 4)], lambda T, a: (a.double() * 2).float(), fd=False),
    C("to_dtype", [(3, 4)], lambda T, a: a.to(T.float64)),
    C("to_kw", [(3, 4)], lambda T, a: a.to(dtype=T.float16).to(T.float32) * a, atol=1e-2, fd=False),
    C("long", [(3, 4)], lambda T, a: (a * 3).long(), nondiff=True),
    C("to_bool", [(3, 4)], lambda T, a: a.round().to(T.bool), nondiff=True),
    C("clone", [(3, 4)], lambda T, a: a.clone() * a),
    C("contiguous", [(3, 4)], lambda T, a: a.t().contiguous()),
]

# ---- ordering, running sums, einsum, scatter, products, distances (ddp/ops/{sorting,
# cumulative,einsum,scatter,products,distance}.py). Random normal inputs have no ties, so
# sort and topk pick the same indices in both libraries; TIES rows use stable=True.
SCATTER_ROWS = [[0, 1, 2, 0, 1], [2, 0, 1, 1, 2]]  # no position written twice
CASES += [
    C("sort", [(3, 5)], lambda T, a: tuple(a.sort())),
    C("sort_desc_dim0", [(4, 3)], lambda T, a: tuple(T.sort(a, 0, descending=True))),
    C("sort_stable_ties", [TIES], lambda T, a: tuple(a.sort(stable=True)), fd=False),
    C("sort_stable_ties_desc", [TIES], lambda T, a: tuple(a.sort(descending=True, stable=True)),
      fd=False),
    C("sort_0d", [np.array(1.5)], lambda T, a: tuple(T.sort(a))),
    C("argsort", [(3, 5)], lambda T, a: a.argsort(dim=1, descending=True), nondiff=True),
    C("argsort_dim0", [(3, 5)], lambda T, a: T.argsort(a, 0), nondiff=True),
    C("topk", [(3, 6)], lambda T, a: tuple(a.topk(3))),
    C("topk_smallest_dim0", [(5, 3)], lambda T, a: tuple(T.topk(a, 2, dim=0, largest=False))),
    C("topk_all", [(4,)], lambda T, a: tuple(a.topk(4))),
    C("cumsum", [(3, 4)], lambda T, a: a.cumsum(1)),
    C("cumsum_dim0", [(3, 4)], lambda T, a: T.cumsum(a, dim=0)),
    C("cumsum_dtype", [(3, 4)], lambda T, a: a.cumsum(-1, dtype=T.float64)),
    C("cumprod", [(3, 4)], lambda T, a: a.cumprod(-1)),
    C("cumprod_dim0", [(3, 2, 2)], lambda T, a: T.cumprod(a, 0)),
    C("cumprod_zeros", [np.array([[2.0, 0.0, 3.0, 0.5], [0.0, 0.0, 1.5, 2.0]])],
      lambda T, a: T.cumprod(a, 1)),
    C("einsum_matmul", [(3, 4), (4, 5)], lambda T, a, b: T.einsum("ij,jk->ik", a, b)),
    C("einsum_bmm", [(2, 3, 4), (2, 4, 5)], lambda T, a, b: T.einsum("bij,bjk->bik", a, b)),
    C("einsum_attention", [(2, 3, 4), (2, 5, 4)],
      lambda T, a, b: T.einsum("bqd, bkd -> bqk", a, b)),
    C("einsum_outer", [(3,), (4,)], lambda T, a, b: T.einsum("i,j->ij", a, b)),
    C("einsum_dot_implicit", [(4,), (4,)], lambda T, a, b: T.einsum("i,i", a, b)),
    C("einsum_trace", [(4, 4)], lambda T, a: T.einsum("ii", a)),
    C("einsum_diagonal", [(4, 4)], lambda T, a: T.einsum("ii->i", a)),
    C("einsum_batched_trace", [(2, 3, 3)], lambda T, a: T.einsum("bii->b", a)),
    C("einsum_transpose_sum", [(2, 3, 4)], lambda T, a: T.einsum("ijk->kj", a)),
    C("einsum_implicit_order", [(3, 4), (4, 2)], lambda T, a, b: T.einsum("ba,ac", a, b)),
    C("einsum_ellipsis", [(2, 3, 4), (4, 5)], lambda T, a, b: T.einsum("...ij,jk->...ik", a, b)),
    C("einsum_ellipsis_implicit", [(2, 3, 4)], lambda T, a: T.einsum("i...->...", a)),
    C("einsum_three", [(2, 3), (3, 4), (4, 2)],
      lambda T, a, b, c: T.einsum("ij,jk,kl->il", a, b, c)),
    C("einsum_list", [(3, 4), (3, 4)], lambda T, a, b: T.einsum("ij,ij->i", [a, b])),
    C("einsum_bcast_dim", [(1, 4), (3, 4)], lambda T, a, b: T.einsum("ij,ij->ij", a, b)),
    C("scatter", [(3, 5), (2, 5)], lambda T, a, s: a.scatter(0, idx(T, SCATTER_ROWS), s)),
    C("scatter_dim1", [(3, 5), (3, 2)],
      lambda T, a, s: T.scatter(a, 1, idx(T, [[0, 4], [1, 3], [2, 0]]), s)),
    C("scatter_value", [(3, 5)], lambda T, a: a.scatter(1, idx(T, [[0], [3], [4]]), 1.5)),
    C("scatter_add", [(3, 5), (2, 5)],
      lambda T, a, s: a.scatter_add(0, idx(T, [[0, 1, 2, 0, 0], [0, 0, 1, 1, 2]]), s)),
    C("scatter_add_fn", [(4,), (6,)],
      lambda T, a, s: T.scatter_add(a, 0, idx(T, [0, 1, 1, 3, 3, 3]), s)),
    C("scatter_inplace", [(3, 5), (2, 5)],
      lambda T, a, s: (a * 1).scatter_(0, idx(T, SCATTER_ROWS), s)),
    C("scatter_add_inplace", [(3, 5), (2, 2)],
      lambda T, a, s: (a + 0).scatter_add_(1, idx(T, [[0, 0], [1, 4]]), s)),
    C("outer", [(3,), (4,)], lambda T, a, b: T.outer(a, b)),
    C("outer_method", [(3,), (2,)], lambda T, a, b: a.outer(b)),
    C("addmm", [(3, 5), (3, 4), (4, 5)], lambda T, c, a, b: T.addmm(c, a, b)),
    C("addmm_bcast_scaled", [(5,), (3, 4), (4, 5)],
      lambda T, c, a, b: T.addmm(c, a, b, beta=0.5, alpha=-2)),
    C("addmm_method", [(3, 1), (3, 4), (4, 5)], lambda T, c, a, b: c.addmm(a, b, alpha=3)),
    C("baddbmm", [(2, 3, 5), (2, 3, 4), (2, 4, 5)], lambda T, c, a, b: T.baddbmm(c, a, b)),
    C("baddbmm_scaled", [(3, 1), (2, 3, 4), (2, 4, 5)],
      lambda T, c, a, b: c.baddbmm(a, b, beta=2, alpha=0.5)),
    C("cdist", [(4, 3), (5, 3)], lambda T, a, b: T.cdist(a, b)),
    C("cdist_batched", [(2, 4, 3), (2, 5, 3)], lambda T, a, b: T.cdist(a, b)),
    C("cdist_bcast", [(1, 4, 3), (2, 5, 3)], lambda T, a, b: T.cdist(a, b)),
    C("cdist_p1", [(4, 3), (5, 3)], lambda T, a, b: T.cdist(a, b, p=1)),
    C("cdist_p3", [(4, 3), (5, 3)], lambda T, a, b: T.cdist(a, b, p=3)),
    C("cdist_p_half", [(4, 3), (5, 3)], lambda T, a, b: T.cdist(a, b, p=0.5)),
    C("cdist_inf", [(4, 3), (5, 3)], lambda T, a, b: T.cdist(a, b, p=float("inf"))),
]


def _setitem(target, index, value):
    target[index] = value
    return target


@pytest.mark.parametrize("shapes,fn,torch_fn,opts", CASES)
def test_against_torch(shapes, fn, torch_fn, opts):
    opts = dict(opts)
    opts.pop("fd", None)
    opts.pop("nondiff", None)
    check_torch(fn, shapes, torch_fn, **opts)


FD_CASES = [case for case in CASES if case.values[3].get("fd", True)]


@pytest.mark.parametrize("shapes,fn,torch_fn,opts", FD_CASES)
def test_finite_differences(shapes, fn, torch_fn, opts):
    opts = dict(opts)
    opts.pop("atol", None)
    if opts.pop("nondiff", False):
        # not differentiable by definition: the output must say so, not be a float off the graph
        _, outputs = ddp_forward(fn, make_inputs(shapes, low=opts.get("low")))
        for k, out in enumerate(outputs):
            assert not out.dtype.is_floating_point, f"output {k} is {out.dtype}: differentiable"
            assert not out.requires_grad and out.grad_fn is None, f"output {k} has a graph"
        return
    assert check_grad(fn, shapes, **opts), "no output requires grad: the op lost its graph"


# ---------------------------------------------------------------- result dtypes (vs torch)
DTYPE_CASES = {
    "f32*int": lambda T: T.ones(2) * 2,
    "f64*float": lambda T: T.ones(2, dtype=T.float64) * 0.5,
    "int/int": lambda T: T.tensor([1, 2]) / 2,
    "int/int_tensor": lambda T: T.tensor([1, 2]) / T.tensor([2, 4]),
    "int+float": lambda T: T.tensor([1, 2]) + 2.5,
    "int*int": lambda T: T.tensor([1, 2]) * 3,
    "int32*int": lambda T: T.tensor([1, 2], dtype=T.int32) * 3,
    "int//int": lambda T: T.tensor([5, -7]) // 2,
    "int%int": lambda T: T.tensor([5, -7]) % 3,
    "neg_int": lambda T: -T.tensor([1, 2]),
    "sum_int": lambda T: T.tensor([1, 2]).sum(),
    "sum_int32": lambda T: T.tensor([1, 2], dtype=T.int32).sum(0),
    "sum_uint8": lambda T: T.tensor([200, 100], dtype=T.uint8).sum(),
    "sum_bool": lambda T: (T.tensor([1, 2, 3]) > 1).sum(),
    "sum_dtype": lambda T: T.ones(2).sum(dtype=T.float64),
    "f32+f64": lambda T: T.ones(2) + T.ones(2, dtype=T.float64),
    "f32+f64_0d": lambda T: T.ones(2) + T.tensor(1.5, dtype=T.float64),
    "i64+f64_0d": lambda T: T.ones(2, dtype=T.int64) + T.tensor(1.5, dtype=T.float64),
    "i32+i64_0d": lambda T: T.ones(2, dtype=T.int32) + T.tensor(7),
    "i32+i64": lambda T: T.ones(2, dtype=T.int32) + T.ones(2, dtype=T.int64),
    "f16+f32": lambda T: T.ones(2, dtype=T.float16) + T.ones(2),
    "int+f32": lambda T: T.tensor([1, 2]) + T.ones(2),
    "uint8+int8": lambda T: T.tensor([1], dtype=T.uint8) + T.tensor([-1], dtype=T.int8),
    "bool+int": lambda T: T.tensor([True, False]) + 1,
    "bool*float": lambda T: T.tensor([True, False]) * 1.5,
    "exp_int": lambda T: T.tensor([1, 2]).exp(),
    "sqrt_int": lambda T: T.sqrt(T.tensor([1, 4])),
    "pow_int_float": lambda T: T.tensor([1, 4]) ** 0.5,
    "pow_int_int": lambda T: T.tensor([1, 4]) ** 2,
    "rpow_int": lambda T: 2 ** T.tensor([1, 4]),
    "where_int_float": lambda T: T.where(T.tensor([True, False]), T.tensor([1, 2]), 0.5),
    "cat_int_float": lambda T: T.cat([T.tensor([1]), T.tensor([1.5])]),
    "argmax": lambda T: T.tensor([1.0, 3.0, 2.0]).argmax(),
    "max_dim_int": lambda T: T.tensor([[1, 5, 2]]).max(1).values,
    "max_dim_indices": lambda T: T.tensor([[1.0, 5.0, 2.0]]).max(1).indices,
    "abs_int": lambda T: T.tensor([-1, 2]).abs(),
    "clamp_int": lambda T: T.tensor([-1, 2, 5]).clamp(0, 3),
    "relu_int": lambda T: T.tensor([-1, 2]).relu(),
    "maximum_int_float": lambda T: T.maximum(T.tensor([1, 5]), T.tensor([2.5, 0.5])),
    "mean_f64": lambda T: T.ones(2, 2, dtype=T.float64).mean(0),
    "softmax_f64": lambda T: T.ones(3, dtype=T.float64).softmax(0),
    "float_cast_int": lambda T: T.tensor([1.7, -1.7]).long(),
    "to_int32": lambda T: T.tensor([1.7, -1.7]).to(T.int32),
    "compare_int_float": lambda T: T.tensor([1, 2]) < 1.5,
    "and_int": lambda T: T.tensor([6, 3]) & T.tensor([3, 1]),
    "or_bool": lambda T: T.tensor([True, False]) | T.tensor([False, False]),
}
DTYPE_CASES.update({  # ordering, running sums, einsum, products
    "cumsum_int32": lambda T: T.tensor([1, 2, 3], dtype=T.int32).cumsum(0),
    "cumsum_bool": lambda T: T.cumsum(T.tensor([True, False, True]), 0),
    "cumprod_int": lambda T: T.tensor([[1, 2], [3, 4]]).cumprod(1),
    "sort_int": lambda T: T.tensor([3, 1, 2]).sort(descending=True).values,
    "sort_indices": lambda T: T.tensor([3.0, 1.0, 2.0]).sort().indices,
    "topk_int": lambda T: T.tensor([[3, 1, 2]], dtype=T.int32).topk(2).values,
    "argsort_bool": lambda T: T.tensor([True, False, True]).argsort(stable=True),
    "einsum_int": lambda T: T.einsum("ij,j->i", T.tensor([[1, 2], [3, 4]]), T.tensor([5, 6])),
    "outer_int_float": lambda T: T.outer(T.tensor([1, 2]), T.tensor([0.5, 1.5])),
})


@pytest.mark.parametrize("name", list(DTYPE_CASES))
def test_result_dtype_and_value(name, torch):
    fn = DTYPE_CASES[name]
    ours, theirs = fn(ddp), fn(torch)
    assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "ddp.")
    assert tuple(ours.shape) == tuple(theirs.shape)
    if ours.dtype.is_floating_point:
        # Most values here are exact (casts, small integers, halves); exp and softmax are not:
        # each library's float32 exp is within 4 ulp of the truth (NumPy's SIMD or libm, torch's
        # per-CPU vectorisation), so they may differ by 8 ulp, never by torch's exact rounding.
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(),
                                   rtol=8 * float(np.finfo(ours.numpy().dtype).eps))
    else:
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_mean_of_integers_raises():
    with pytest.raises(RuntimeError, match="mean"):
        ddp.tensor([1, 2]).mean()


def test_setitem_outside_graph_matches_torch(torch):
    results = []
    for T in (ddp, torch):
        x = T.zeros(3, 4)
        x[1, [0, 2]] = 5
        x[x > 4] = -1.5
        x[:, 1] = T.tensor([1.0, 2.0, 3.0])
        x[0] = T.tensor([7, 8, 9, 10])  # integer values cast into a float tensor
        x[T.tensor([2, 2])] += 1  # repeated indices outside the graph: written once
        results.append(x.numpy().copy())
    np.testing.assert_array_equal(results[0], results[1])


def test_setitem_on_leaf_under_no_grad_writes_storage():
    w = ddp.ones(3, requires_grad=True)
    alias = w.detach()
    with ddp.no_grad():
        w[1] = 4.0
    assert w.is_leaf and w.requires_grad
    assert alias.tolist() == [1.0, 4.0, 1.0]


def test_setitem_records_overwritten_region_gets_no_gradient():
    x = ddp.ones(4, requires_grad=True)
    y = x * 3
    y[1:3] = 0.0
    y.sum().backward()
    assert x.grad.tolist() == [3.0, 0.0, 0.0, 3.0]
    assert y.grad_fn is not None
