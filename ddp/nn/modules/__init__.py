"""The layers of ``ddp.nn``."""

from ddp.nn.modules.activation import (
    GELU,
    Dropout,
    Flatten,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from ddp.nn.modules.container import ModuleDict, ModuleList, Sequential
from ddp.nn.modules.conv import Conv2d
from ddp.nn.modules.elementwise_loss import (
    BCELoss,
    BCEWithLogitsLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    SmoothL1Loss,
)
from ddp.nn.modules.linear import Identity, Linear
from ddp.nn.modules.loss import CrossEntropyLoss, MSELoss, NLLLoss
from ddp.nn.modules.module import Module
from ddp.nn.modules.nonlinear import (
    ELU,
    Dropout1d,
    Dropout2d,
    Hardtanh,
    LeakyReLU,
    Mish,
    PReLU,
    ReLU6,
    SiLU,
    Softplus,
)
from ddp.nn.modules.normalization import LayerNorm
from ddp.nn.modules.pooling import MaxPool2d
from ddp.nn.modules.sparse import Embedding

__all__ = [
    "GELU", "Conv2d", "CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "Identity",
    "LayerNorm", "Linear", "LogSoftmax", "MSELoss", "MaxPool2d", "Module", "ModuleDict",
    "ModuleList", "NLLLoss", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
]
__all__ += [
    "BCELoss", "BCEWithLogitsLoss", "Dropout1d", "Dropout2d", "ELU", "Hardtanh", "HuberLoss",
    "KLDivLoss", "L1Loss", "LeakyReLU", "Mish", "PReLU", "ReLU6", "SiLU", "SmoothL1Loss",
    "Softplus",
]
