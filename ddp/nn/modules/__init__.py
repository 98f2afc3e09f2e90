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
from ddp.nn.modules.conv import Conv1d, Conv2d, ConvTranspose2d
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

# ResNet layers: batch/group norm, 1-D convolution, average pooling
from ddp.nn.modules.avgpool import AdaptiveAvgPool2d, AvgPool2d  # noqa: E402
from ddp.nn.modules.batchnorm import (  # noqa: E402
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    SyncBatchNorm,
)
from ddp.nn.modules.groupnorm import GroupNorm  # noqa: E402

__all__ += ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
            "Conv1d", "ConvTranspose2d", "GroupNorm", "SyncBatchNorm"]

# Recurrent layers: RNN, LSTM, GRU and their cells
from ddp.nn.modules.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

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

# channels <-> space
from ddp.nn.modules.pixelshuffle import PixelShuffle, PixelUnshuffle  # noqa: E402

__all__ += ["PixelShuffle", "PixelUnshuffle"]
