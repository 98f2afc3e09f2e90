"""``ddp.nn``: modules, ``functional``, ``init`` and ``utils`` with PyTorch's names and semantics.

``ddp.nn.parallel`` (``DistributedDataParallel``) is imported on first access.
"""

from ddp.nn import functional, init, utils
from ddp.nn.modules import (
    GELU,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    LayerNorm,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Module,
    ModuleDict,
    ModuleList,
    MSELoss,
    NLLLoss,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from ddp.nn.modules.elementwise_loss import (
    BCELoss,
    BCEWithLogitsLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    SmoothL1Loss,
)
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
from ddp.nn.parameter import Parameter


def __getattr__(name: str):
    if name == "parallel":
        import importlib

        return importlib.import_module("ddp.nn.parallel")
    raise AttributeError(f"module 'ddp.nn' has no attribute '{name}'")


__all__ = [
    "GELU", "Conv2d", "CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "Identity",
    "LayerNorm", "Linear", "LogSoftmax", "MSELoss", "MaxPool2d", "Module", "ModuleDict",
    "ModuleList", "NLLLoss", "Parameter", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
    "functional", "init", "utils",
]
__all__ += [
    "BCELoss", "BCEWithLogitsLoss", "Dropout1d", "Dropout2d", "ELU", "Hardtanh", "HuberLoss",
    "KLDivLoss", "L1Loss", "LeakyReLU", "Mish", "PReLU", "ReLU6", "SiLU", "SmoothL1Loss",
    "Softplus",
]

# ResNet layers: batch/group norm, 1-D convolution, average pooling
from ddp.nn.modules import (  # noqa: E402
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Conv1d,
    ConvTranspose2d,
    GroupNorm,
    SyncBatchNorm,
)

__all__ += ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
            "Conv1d", "ConvTranspose2d", "GroupNorm", "SyncBatchNorm"]

# Recurrent layers: RNN, LSTM, GRU and their cells
from ddp.nn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

__all__ += ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]

# attention and transformer layers
from ddp.nn.modules.attention import MultiheadAttention  # noqa: E402
from ddp.nn.modules.transformer import (  # noqa: E402
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ += ["MultiheadAttention", "Transformer", "TransformerDecoder", "TransformerDecoderLayer",
            "TransformerEncoder", "TransformerEncoderLayer"]

# resampling
from ddp.nn.modules.upsampling import (  # noqa: E402
    Upsample,
    UpsamplingBilinear2d,
    UpsamplingNearest2d,
)

__all__ += ["Upsample", "UpsamplingBilinear2d", "UpsamplingNearest2d"]
