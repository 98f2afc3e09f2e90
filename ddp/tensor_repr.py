"""``repr`` of tensors in torch's format: ``tensor([0.9000, 1.9000], requires_grad=True)``.

A port of the strided, real-valued part of ``torch/_tensor_str.py`` with torch's default print
options (precision 4, threshold 1000, 3 edge items, 80 columns), so that programs print the same
text under ``import ddp as torch``.
"""

from __future__ import annotations

import math

import numpy as np

from ddp import dtypes
from ddp.backend import to_numpy

_PRECISION = 4
_THRESHOLD = 1000
_EDGE_ITEMS = 3
_LINE_WIDTH = 80


class _Formatter:
    """Chooses integer/fixed/scientific notation and a common width from the values shown."""

    def __init__(self, values: np.ndarray):
        self.floating = dtypes.is_floating(values.dtype)
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        flat = values.ravel()
        if not self.floating:
            self.max_width = max((len(self._plain(v)) for v in flat.tolist()), default=1)
            return
        flat64 = flat.astype(np.float64)
        shown = flat64[np.isfinite(flat64) & (flat64 != 0)]
        if shown.size == 0:
            return
        absolute = np.abs(shown)
        small, big = float(absolute.min()), float(absolute.max())
        self.int_mode = bool(np.all(shown == np.ceil(shown)))
        self.sci_mode = big / small > 1000.0 or big > 1.0e8 or small < 1.0e-4
        if self.sci_mode:
            self.max_width = max(len(f"{v:.{_PRECISION}e}") for v in shown.tolist())
        elif self.int_mode:
            self.max_width = max(len(f"{v:.0f}") + 1 for v in shown.tolist())
        else:
            self.max_width = max(len(f"{v:.{_PRECISION}f}") for v in shown.tolist())

    @staticmethod
    def _plain(value) -> str:
        return str(value)

    def format(self, value) -> str:
        if self.floating:
            if self.sci_mode:
                text = f"{value:{self.max_width}.{_PRECISION}e}"
            elif self.int_mode:
                text = f"{value:.0f}"
                if not (math.isinf(value) or math.isnan(value)):
                    text += "."
            else:
                text = f"{value:.{_PRECISION}f}"
        else:
            text = str(value)
        return " " * (self.max_width - len(text)) + text


def _summarized(array: np.ndarray) -> np.ndarray:
    """The values that will be printed when the tensor is summarized (edges only)."""
    if array.ndim == 0:
        return array
    if array.ndim == 1:
        if array.shape[0] > 2 * _EDGE_ITEMS:
            return np.concatenate((array[:_EDGE_ITEMS], array[-_EDGE_ITEMS:]))
        return array
    rows = list(array)
    if len(rows) > 2 * _EDGE_ITEMS:
        rows = rows[:_EDGE_ITEMS] + rows[-_EDGE_ITEMS:]
    return np.stack([_summarized(r) for r in rows])


def _vector(array: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    per_line = max(1, math.floor((_LINE_WIDTH - indent) / (fmt.max_width + 2)))
    if summarize and array.shape[0] > 2 * _EDGE_ITEMS:
        data = ([fmt.format(v) for v in array[:_EDGE_ITEMS].tolist()] + [" ..."]
                + [fmt.format(v) for v in array[-_EDGE_ITEMS:].tolist()])
    else:
        data = [fmt.format(v) for v in array.tolist()]
    lines = [", ".join(data[i:i + per_line]) for i in range(0, len(data), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _body(array: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    if array.ndim == 0:
        return fmt.format(array.item())
    if array.ndim == 1:
        return _vector(array, indent, summarize, fmt)
    n = array.shape[0]
    if summarize and n > 2 * _EDGE_ITEMS:
        shown = [*range(_EDGE_ITEMS), None, *range(n - _EDGE_ITEMS, n)]
        slices = ["..." if i is None else _body(array[i], indent + 1, summarize, fmt)
                  for i in shown]
    else:
        slices = [_body(array[i], indent + 1, summarize, fmt) for i in range(n)]
    return "[" + ("," + "\n" * (array.ndim - 1) + " " * (indent + 1)).join(slices) + "]"


def _add_suffixes(text: str, suffixes: list[str], indent: int) -> str:
    parts = [text]
    last_line_len = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_len + len(suffix) + 2 > _LINE_WIDTH:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_len += len(suffix) + 2
    parts.append(")")
    return "".join(parts)


def tensor_repr(t) -> str:
    """torch's ``repr`` of ``t``, spelled with ``ddp.`` instead of ``torch.``."""
    array = to_numpy(t.array)
    prefix = "tensor("
    indent = len(prefix)
    suffixes = []
    if t.device.type != "cpu":
        suffixes.append(f"device='{t.device}'")
    d = t.dtype
    if array.size == 0:
        if array.ndim != 1:
            suffixes.append(f"size={tuple(array.shape)}")
        if d != dtypes.default_float:
            suffixes.append(f"dtype=ddp.{d.name}")
        body = "[]"
    else:
        if d not in (dtypes.default_float, dtypes.int64, dtypes.bool_):
            suffixes.append(f"dtype=ddp.{d.name}")
        summarize = array.size > _THRESHOLD
        fmt = _Formatter(_summarized(array) if summarize else array)
        body = _body(array, indent, summarize, fmt)
    if t.grad_fn is not None:
        suffixes.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        suffixes.append("requires_grad=True")
    return _add_suffixes(prefix + body, suffixes, indent)
