"""``make_grid`` (a real tiling, the shape programs plot) and ``save_image`` (writes nothing)."""

from __future__ import annotations

import torch  # real torch, or ddp through the compatibility alias


def make_grid(tensor, nrow: int = 8, padding: int = 2, normalize: bool = False, **kwargs):
    """(B, C, H, W) -> (C, H', W') tiles with ``padding`` pixels between them."""
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor), 0)
    b, c, h, w = tensor.shape
    cols = min(nrow, b)
    rows = (b + cols - 1) // cols
    grid = torch.zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for k in range(b):
        r, q = divmod(k, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = tensor[k]
    return grid


def save_image(tensor, fp, **kwargs) -> None:
    """Programs save sample images; the compatibility runs compare printed numbers only."""
