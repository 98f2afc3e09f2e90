"""``Compose``, ``ToTensor``, ``Normalize``, ``Resize``, ``CenterCrop`` on uint8 arrays."""

from __future__ import annotations

import numpy as np
import torch  # real torch, or ddp through the compatibility alias


class Compose:
    def __init__(self, transforms) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    """uint8 ``(H, W[, C])`` -> float32 ``(C, H, W)`` in ``[0, 1]``, as torchvision's."""

    def __call__(self, image):
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        array = np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / 255
        return torch.from_numpy(array)


class Normalize:
    def __init__(self, mean, std, inplace: bool = False) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, tensor):
        return (tensor - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)


class _SizeCheck:
    """``Resize``/``CenterCrop`` to the size the fake images already have: identity."""

    def __init__(self, size, *args, **kwargs) -> None:
        self.size = size

    def __call__(self, image):
        h, w = np.asarray(image).shape[:2]
        want = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if (h, w) != want and min(h, w) != want[0]:
            raise NotImplementedError(f"compat shim: {type(self).__name__}({self.size}) of a "
                                      f"{h}x{w} image; generate images of that size instead")
        return image


class Resize(_SizeCheck):
    pass


class CenterCrop(_SizeCheck):
    pass
