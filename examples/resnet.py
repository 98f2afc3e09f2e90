"""A ResNet-18 with BatchNorm, trained data-parallel with SyncBatchNorm on CIFAR-shaped data.

    mpiexec -n 2 python examples/resnet.py                   # two MPI ranks
    python examples/resnet.py --steps 3 --width 16           # one process, a narrower net
    ddprun --threads -n 2 examples/resnet.py --width 8       # two ranks as threads

The model is torchvision's CIFAR layout of ResNet-18: a 3x3 stem, four stages of two
BasicBlocks (conv3x3-BN-ReLU, conv3x3-BN, identity or 1x1-conv+BN shortcut, ReLU) at widths
w, 2w, 4w, 8w with strides 1, 2, 2, 2, a global average pool and a linear head. Every
``BatchNorm2d`` becomes a ``SyncBatchNorm`` (``convert_sync_batchnorm``), so each layer
normalises with the statistics of the global batch, and DDP averages the gradients. The data
are random images with random labels (the point is the program, not the accuracy): every step
draws a global batch from a fixed seed and each rank trains on its slice.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ddp as torch
import ddp.distributed as dist
import ddp.nn as nn
import ddp.nn.functional as F
from ddp.nn.parallel import DistributedDataParallel


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, plus the (projected when needed) input."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), width: int = 64, num_classes: int = 10):
        super().__init__()
        self.in_planes = width
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, layers[0], 1)
        self.layer2 = self._make_layer(2 * width, layers[1], 2)
        self.layer3 = self._make_layer(4 * width, layers[2], 2)
        self.layer4 = self._make_layer(8 * width, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def global_batch(step: int, size: int, image: int, classes: int = 10):
    rng = np.random.default_rng(step)
    x = rng.standard_normal((size, 3, image, image), dtype=np.float32)
    return x, rng.integers(0, classes, size)


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="images per rank")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)

    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(ResNet(width=args.width))
    ddp_model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=5e-4)
    if rank == 0:
        sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        params = sum(p.numel() for p in model.parameters())
        print(f"ResNet-18 (width {args.width}): {params} parameters, {sync} SyncBatchNorm "
              f"layers, {world} rank(s) x {args.batch_size} images of {args.image_size}x"
              f"{args.image_size}", flush=True)
    losses = []
    for step in range(args.steps):
        x, y = global_batch(step, world * args.batch_size, args.image_size)
        rows = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = F.cross_entropy(ddp_model(torch.from_numpy(x[rows])), torch.from_numpy(y[rows]))
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        total = torch.tensor([loss.item()], dtype=torch.float64)
        dist.all_reduce(total)
        losses.append(total.item() / world)
        if rank == 0:
            print(f"step {step + 1:3d}  loss {losses[-1]:.4f}  ({elapsed:.2f} s/step)",
                  flush=True)
    stats = model.layer4[1].bn2.running_var.numpy()
    same = _same_on_all_ranks(stats)  # a collective: every rank asks
    if rank == 0:
        print(f"running statistics identical on all ranks: {same}", flush=True)
    dist.destroy_process_group()
    return losses


def _same_on_all_ranks(array: np.ndarray) -> bool:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, array)
    return all(np.array_equal(array, other) for other in gathered)


if __name__ == "__main__":
    main()
