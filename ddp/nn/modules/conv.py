"""Convolution modules: ``Conv1d``, ``Conv2d``, ``ConvTranspose2d`` over one ``_ConvNd`` base.

The base holds what they share, as torch's ``_ConvNd`` does: the hyperparameters as tuples of
``n`` ints, the ``weight`` (``(C_out, C_in, *k)``, or ``(C_in, C_out, *k)`` when transposed)
and ``bias`` parameters, torch's default initialisation and the repr. Only ``groups=1`` and
zero padding are supported.
"""

from __future__ import annotations

import math

from ddp import creation
from ddp.nn import functional as F
from ddp.nn import init
from ddp.nn.modules.module import Module
from ddp.nn.parameter import Parameter
from ddp.tensor import Tensor


def _ntuple(value, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


class _ConvNd(Module):
    """What every convolution module shares; subclasses set ``_dims`` and write ``forward``."""

    _dims = 2
    _transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding,
                 dilation, groups: int, bias: bool, padding_mode: str, device, dtype,
                 output_padding=0) -> None:
        super().__init__()
        name, n = type(self).__name__, self._dims
        if groups != 1:
            raise NotImplementedError(f"{name}: groups != 1 is not supported")
        if padding_mode != "zeros":
            if self._transposed:
                raise ValueError(f'Only "zeros" padding mode is supported for {name}, got '
                                 f"{padding_mode!r}")
            raise NotImplementedError(f"{name}: padding_mode={padding_mode!r} is not supported")
        if isinstance(padding, str):
            raise NotImplementedError(f"{name}: string padding is not supported")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _ntuple(kernel_size, n)
        self.stride = _ntuple(stride, n)
        self.padding = _ntuple(padding, n)
        self.dilation = _ntuple(dilation, n)
        if self._transposed:
            self.output_padding = _ntuple(output_padding, n)
        self.groups = groups
        self.padding_mode = padding_mode
        channels = (in_channels, out_channels) if self._transposed else (out_channels,
                                                                          in_channels)
        self.weight = Parameter(creation.empty(*channels, *self.kernel_size, device=device,
                                               dtype=dtype))
        if bias:
            self.bias = Parameter(creation.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default: kaiming_uniform_(a=sqrt(5)), bias U(+-1/sqrt(fan_in)); fan_in is
        computed from the weight as torch does (``C_out * prod(k)`` when transposed)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        n = self._dims
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0,) * n:
            text += f", padding={self.padding}"
        if self.dilation != (1,) * n:
            text += f", dilation={self.dilation}"
        if self._transposed and self.output_padding != (0,) * n:
            text += f", output_padding={self.output_padding}"
        if self.bias is None:
            text += ", bias=False"
        return text


class Conv1d(_ConvNd):
    """1-D convolution over ``(N, C_in, L)`` inputs: the ``Conv2d`` kernels on a view."""

    _dims = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        return F.conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation)


class Conv2d(_ConvNd):
    """2-D convolution over ``(N, C_in, H, W)`` inputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution; weight ``(C_in, C_out, kh, kw)`` as torch's."""

    _transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype, output_padding)

    def forward(self, input: Tensor, output_size=None) -> Tensor:  # noqa: A002
        if output_size is not None:
            raise NotImplementedError("ConvTranspose2d: output_size is not supported; pass "
                                      "output_padding to the constructor")
        return F.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)
