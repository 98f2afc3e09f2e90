"""The reference models, written once against a torch-like library handle.

``build(lib, name)`` returns the model, a batch maker and an optimizer factory for ``lib``, which
is either ``torch`` or ``ddp``: the same source builds both, so a benchmark or test compares the
two runtimes on identical architectures. ``copy_weights(torch_model, ddp_model)`` makes the
weights identical.
"""

from __future__ import annotations

import math

import numpy as np


def mlp(lib):
    """MLP 784-1024-1024-10 (ReLU)."""
    nn = lib.nn
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def mnist_cnn(lib):
    """The pytorch/examples MNIST CNN: conv 32, conv 64, max-pool, fc 9216->128->10."""
    nn = lib.nn
    F = nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2)
            x = lib.flatten(x, 1)
            x = F.relu(self.fc1(x))
            return self.fc2(x)

    return Net()


def gpt(lib, vocab: int = 96, context: int = 128, width: int = 256, heads: int = 4,
        layers: int = 4):
    """A small GPT: token + position embeddings, pre-LN blocks, causal self-attention."""
    nn = lib.nn
    F = nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)
            self.ln2 = nn.LayerNorm(width)
            self.fc = nn.Linear(width, 4 * width)
            self.fc_out = nn.Linear(4 * width, width)
            self.register_buffer("causal", lib.tril(lib.ones(context, context, dtype=lib.bool)),
                                 persistent=False)

        def forward(self, x):
            batch, time, channels = x.shape
            head = channels // heads
            q, k, v = self.qkv(self.ln1(x)).split(channels, dim=2)
            q = q.view(batch, time, heads, head).transpose(1, 2)
            k = k.view(batch, time, heads, head).transpose(1, 2)
            v = v.view(batch, time, heads, head).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(head))
            att = att.masked_fill(~self.causal[:time, :time], float("-inf"))
            att = F.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(batch, time, channels)
            x = x + self.proj(y)
            return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, width)
            self.pos = nn.Embedding(context, width)
            self.blocks = nn.Sequential(*[Block() for _ in range(layers)])
            self.ln_f = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab, bias=False)

        def forward(self, idx):
            time = idx.shape[1]
            x = self.tok(idx) + self.pos(lib.arange(time, device=idx.device))
            return self.head(self.ln_f(self.blocks(x)))

    return GPT()


def resnet(lib, width: int = 64, num_classes: int = 10):
    """ResNet-18, torchvision's CIFAR layout (examples/resnet.py): a 3x3 stem, four stages of
    two BasicBlocks (conv3x3-BN-ReLU, conv3x3-BN, identity or 1x1 conv + BN shortcut) at widths
    w, 2w, 4w, 8w and strides 1, 2, 2, 2, global average pool, linear head."""
    nn = lib.nn

    def conv3x3(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = conv3x3(cin, cout, stride)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = conv3x3(cout, cout)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride,
                                                          bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = conv3x3(3, width)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            stages, cin = [], width
            for k, stride in enumerate((1, 2, 2, 2)):
                cout = width * 2 ** k
                stages.append(nn.Sequential(BasicBlock(cin, cout, stride),
                                            BasicBlock(cout, cout, 1)))
                cin = cout
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(8 * width, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(lib.flatten(self.avgpool(x), 1))

    return ResNet()


def batch(name: str, batch_size: int, seed: int = 0):
    """NumPy inputs and integer targets for one step of model ``name``."""
    rng = np.random.default_rng(seed)
    if name == "mlp":
        return (rng.standard_normal((batch_size, 784), dtype=np.float32),
                rng.integers(0, 10, batch_size))
    if name == "cnn":
        return (rng.standard_normal((batch_size, 1, 28, 28), dtype=np.float32),
                rng.integers(0, 10, batch_size))
    if name == "resnet":
        return (rng.standard_normal((batch_size, 3, 32, 32), dtype=np.float32),
                rng.integers(0, 10, batch_size))
    if name == "gpt":
        tokens = rng.integers(0, 96, (batch_size, 129))
        return tokens[:, :-1].copy(), tokens[:, 1:].copy()
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(BUILDERS)}")


BUILDERS = {"mlp": mlp, "cnn": mnist_cnn, "gpt": gpt, "resnet": resnet}
DEFAULT_BATCH = {"mlp": 256, "cnn": 64, "gpt": 16, "resnet": 16}


def make_optimizer(lib, name: str, params):
    """SGD-momentum for the MLP (and the ResNet, with weight decay as for CIFAR), Adam for the
    CNN, AdamW for the GPT (as the issue specifies)."""
    if name == "resnet":
        return lib.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    if name == "mlp":
        return lib.optim.SGD(params, lr=0.01, momentum=0.9)
    if name == "cnn":
        return lib.optim.Adam(params, lr=1e-3)
    return lib.optim.AdamW(params, lr=3e-4, weight_decay=0.1)


def loss_fn(lib, logits, target):
    F = lib.nn.functional
    if logits.ndim == 3:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return F.cross_entropy(logits, target)


def copy_weights(torch_model, ddp_model) -> None:
    """Load ``torch_model``'s parameters and buffers into ``ddp_model`` (same architecture)."""
    import ddp

    state = {k: ddp.tensor(v.detach().cpu().numpy()) for k, v in
             torch_model.state_dict().items()}
    ddp_model.load_state_dict(state)
