"""``repr`` of tensors in torch's format: ``tensor([0.9000, 1.9000], requires_grad=True)``."""

from __future__ import annotations

import numpy as np

from ddp import dtypes
from ddp.backend import to_numpy

_SUMMARIZE_OVER = 1000
_EDGE_ITEMS = 3


def _float_formatter(values: np.ndarray):
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return lambda v: _nonfinite(v) or f"{v:.4f}"
    absolute = np.abs(finite)
    integral = bool(np.all(finite == np.round(finite)))
    big, small = float(absolute.max()), float(absolute.min())
    if integral and big < 1e8:
        return lambda v: _nonfinite(v) or f"{v:.0f}."
    if big >= 1e8 or (small != 0 and (small < 1e-4 or big / small > 1000.0)):
        return lambda v: _nonfinite(v) or f"{v:.4e}"
    return lambda v: _nonfinite(v) or f"{v:.4f}"


def _nonfinite(v) -> str | None:
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return None


def _format_array(array: np.ndarray, indent: int) -> str:
    summarize = array.size > _SUMMARIZE_OVER
    if array.dtype.kind == "f":
        fmt = _float_formatter(array.astype(np.float64).ravel())
    elif array.dtype == np.bool_:
        def fmt(v):
            return "True" if v else "False"
    else:
        def fmt(v):
            return str(int(v))
    flat = array.ravel()
    width = max((len(fmt(v)) for v in flat[:2000]), default=0)

    def render(a: np.ndarray, depth: int) -> str:
        if a.ndim == 0:
            return fmt(a.item()).rjust(width)
        if a.ndim == 1:
            items = [fmt(v).rjust(width) for v in _edge(a, summarize)]
            return "[" + ", ".join(items) + "]"
        rows = [render(sub, depth + 1) if sub is not None else "..." for sub in _edge_rows(
            a, summarize)]
        sep = "," + "\n" * (a.ndim - 1) + " " * (indent + depth + 1)
        return "[" + sep.join(rows) + "]"

    return render(array, 0)


def _edge(a, summarize):
    if summarize and a.shape[0] > 2 * _EDGE_ITEMS:
        return [*a[:_EDGE_ITEMS].tolist(), *a[-_EDGE_ITEMS:].tolist()]
    return a.tolist()


def _edge_rows(a, summarize):
    if summarize and a.shape[0] > 2 * _EDGE_ITEMS:
        return [*a[:_EDGE_ITEMS], None, *a[-_EDGE_ITEMS:]]
    return list(a)


def tensor_repr(t) -> str:
    array = to_numpy(t.array)
    prefix = "tensor("
    if array.size == 0:
        body = "[]" if array.ndim <= 1 else f"[], size={tuple(array.shape)}"
    else:
        body = _format_array(array, len(prefix))
        if array.ndim == 1 and array.size > _SUMMARIZE_OVER:
            head = ", ".join(body.split(", ")[:_EDGE_ITEMS])
            tail = ", ".join(body.split(", ")[-_EDGE_ITEMS:])
            body = head + ", ..., " + tail
    extras = []
    if t.device.type != "cpu":
        extras.append(f"device='{t.device}'")
    d = t.dtype
    if d not in (dtypes.default_float, dtypes.int64, dtypes.bool_) or array.size == 0 and (
            d != dtypes.default_float):
        extras.append(f"dtype=ddp.{d.name}")
    if t.grad_fn is not None:
        extras.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return prefix + ", ".join([body, *extras]) + ")"
