"""``MNIST``, ``FashionMNIST``, ``CIFAR10`` and ``FakeData`` of random pixels, small sizes.

Sizes come from ``COMPAT_DATASET_SIZES`` (``"train,test"``, default ``"64,32"``), the harness's
adapter for "a few steps": the programs' own argv cannot shrink a dataset.
"""

from __future__ import annotations

import os
import zlib

import numpy as np


def _sizes() -> tuple[int, int]:
    train, test = os.environ.get("COMPAT_DATASET_SIZES", "64,32").split(",")
    return int(train), int(test)


class _ImageDataset:
    """``(transform(image), target)`` pairs; images are uint8 arrays (H, W[, C])."""

    image_shape: tuple[int, ...] = (28, 28)
    num_classes = 10

    def __init__(self, root=None, train: bool = True, download: bool = False,
                 transform=None, target_transform=None, size: int | None = None) -> None:
        n_train, n_test = _sizes()
        n = size if size is not None else (n_train if train else n_test)
        seed = zlib.crc32(f"{type(self).__name__}/{train}".encode())
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, size=(n, *self.image_shape), dtype=np.uint8)
        # every class equally often (programs divide by per-class counts)
        self.targets = [int(t) for t in rng.permutation(np.arange(n) % self.num_classes)]
        self.transform = transform
        self.target_transform = target_transform
        self.train = train

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image, target = self.data[index], self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


class MNIST(_ImageDataset):
    image_shape = (28, 28)
    classes = [f"{d} - {name}" for d, name in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]


class FashionMNIST(MNIST):
    pass


class CIFAR10(_ImageDataset):
    image_shape = (32, 32, 3)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


class FakeData(_ImageDataset):
    """torchvision's ``FakeData(size, image_size=(C, H, W), num_classes, transform)``."""

    def __init__(self, size: int = 1000, image_size=(3, 224, 224), num_classes: int = 10,
                 transform=None, target_transform=None, random_offset: int = 0) -> None:
        c, h, w = image_size
        self.image_shape = (h, w, c)
        self.num_classes = num_classes
        super().__init__(train=True, transform=transform, target_transform=target_transform,
                         size=min(size, _sizes()[0]))
