"""``scaled_dot_product_attention``: torch's math formulation, built from differentiable ops.

``softmax(q @ k^T * scale + bias) @ v``, where ``bias`` is ``-inf`` where a bool mask is False
(or above the diagonal when ``is_causal``) and a float mask is added as is; a query whose keys
are all masked gets zeros, as torch's CPU kernels give (not NaN). Built on ``matmul``,
``masked_fill`` and ``softmax`` so autograd comes for free.
"""

from __future__ import annotations

import math

from ddp import creation, ops
from ddp.autograd.autocast_mode import autocast_op
from ddp.dtypes import bool_ as _BOOL
from ddp.nn._functions import activation as _act
from ddp.tensor import Tensor


def _check(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None,
           is_causal: bool) -> None:
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(
            "Expected query, key, and value to have the same dtype, but got query.dtype: "
            f"{query.dtype} key.dtype: {key.dtype} and value.dtype: {value.dtype} instead.")
    if query.ndim < 2 or key.ndim < 2 or value.ndim < 2:
        raise RuntimeError(
            f"scaled_dot_product_attention: query {tuple(query.shape)}, key {tuple(key.shape)} "
            f"and value {tuple(value.shape)} need at least 2 dims (..., L or S, E)")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise RuntimeError(
            f"scaled_dot_product_attention: query {tuple(query.shape)} and key "
            f"{tuple(key.shape)} need the same last dim E, key and value "
            f"{tuple(value.shape)} the same sequence length S (dim -2)")
    if attn_mask is not None:
        if is_causal:
            raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not "
                               "be set when is_causal=True")
        if attn_mask.dtype != _BOOL and attn_mask.dtype != query.dtype:
            raise RuntimeError(
                "Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                f"attn_mask.dtype: {attn_mask.dtype} and  query.dtype: {query.dtype} instead.")


def _repeat_heads(x: Tensor, groups: int) -> Tensor:
    """``x.repeat_interleave(groups, dim=-3)``: each key/value head serves ``groups`` queries."""
    if groups == 1:
        return x
    *lead, h, s, e = x.shape
    x = x.unsqueeze(-3).expand(*lead, h, groups, s, e)
    return x.reshape(*lead, h * groups, s, e)


@autocast_op("scaled_dot_product_attention")
def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """Attention of ``query (..., L, E)`` over ``key (..., S, E)`` and ``value (..., S, Ev)``.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``; leading dims broadcast against ``query``'s.
        value: ``(..., S, Ev)``.
        attn_mask: bool (True = attend) or float (added to the scores), broadcastable to
            ``(..., L, S)``.
        dropout_p: dropout probability on the attention weights (always applied, as torch).
        is_causal: mask out keys after each query (lower-triangular ``(L, S)``).
        scale: score scale; default ``1 / sqrt(E)``.
        enable_gqa: let ``query`` have a multiple of ``key``/``value``'s heads (dim -3).

    Returns:
        ``(..., L, Ev)``.
    """
    _check(query, key, value, attn_mask, is_causal)
    if enable_gqa:
        if query.ndim < 3 or key.ndim < 3 or query.shape[-3] % key.shape[-3] \
                or key.shape[-3] != value.shape[-3]:
            raise RuntimeError(
                f"scaled_dot_product_attention(enable_gqa=True): query heads (dim -3 of "
                f"{tuple(query.shape)}) must be a multiple of key {tuple(key.shape)} and value "
                f"{tuple(value.shape)} heads, which must be equal")
        groups = query.shape[-3] // key.shape[-3]
        key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    L, S = query.shape[-2], key.shape[-2]
    scale_factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    scores = ops.matmul(query, ops.transpose(key, -2, -1)) * scale_factor
    if is_causal:
        keep = ops.tril(creation.ones(L, S, dtype=_BOOL, device=query.device))
        scores = ops.masked_fill(scores, ops.logical_not(keep), float("-inf"))
    elif attn_mask is not None:
        if attn_mask.dtype == _BOOL:
            scores = ops.masked_fill(scores, ops.logical_not(attn_mask), float("-inf"))
        else:
            scores = scores + attn_mask
    if is_causal or attn_mask is None:
        weights = ops.softmax(scores, -1)
    else:
        # torch's safe softmax: a row with every key masked attends to nothing (zeros, zero
        # gradient) instead of NaN. Its scores are zeroed first so that softmax's backward
        # sees no NaN to multiply by the zero gradient.
        dead = (scores.detach() == float("-inf")).all(-1, keepdim=True)
        weights = ops.masked_fill(ops.softmax(ops.masked_fill(scores, dead, 0.0), -1), dead,
                                  0.0)
    if dropout_p > 0.0:
        weights = _act.Dropout.apply(weights, float(dropout_p), None)
    return ops.matmul(weights, value)
