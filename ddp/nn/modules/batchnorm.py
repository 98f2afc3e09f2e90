"""``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` and ``SyncBatchNorm``, with torch's
parameters (``weight``, ``bias``), buffers (``running_mean``, ``running_var``,
``num_batches_tracked``) and state_dict keys, so a torch checkpoint loads as it is."""

from __future__ import annotations

from ddp import creation, dtypes
from ddp.autograd.grad_mode import no_grad
from ddp.distributed.api import is_initialized, resolve_group
from ddp.nn import functional as F
from ddp.nn import init
from ddp.nn._functions import batchnorm as _bn
from ddp.nn.modules.module import Module
from ddp.nn.parameter import Parameter
from ddp.tensor import Tensor


class _NormBase(Module):
    """Parameters, buffers and resets shared by the batch norm layers (torch's ``_NormBase``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(creation.empty(num_features, device=device, dtype=dtype))
            if bias:
                self.bias = Parameter(creation.empty(num_features, device=device, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean",
                                 creation.zeros(num_features, device=device, dtype=dtype))
            self.register_buffer("running_var",
                                 creation.ones(num_features, device=device, dtype=dtype))
            self.register_buffer("num_batches_tracked",
                                 creation.tensor(0, dtype=dtypes.int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.array[...] = 0
            self.running_var.array[...] = 1
            self.num_batches_tracked.array[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        raise NotImplementedError

    def _forward_settings(self) -> tuple[float, bool, Tensor | None, Tensor | None]:
        """``(momentum factor, use batch stats, running_mean, running_var)`` as torch's forward.

        Counts the batch in ``num_batches_tracked`` when training with running statistics;
        ``momentum=None`` then means a cumulative average (factor ``1 / num_batches_tracked``).
        """
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.array[...] += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.array.item())
        use_batch_stats = self.training or (self.running_mean is None
                                            and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return (factor, use_batch_stats, self.running_mean if keep else None,
                self.running_var if keep else None)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class _BatchNorm(_NormBase):
    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        self._check_input_dim(input)
        factor, use_batch_stats, mean, var = self._forward_settings()
        return F.batch_norm(input, mean, var, self.weight, self.bias, use_batch_stats, factor,
                            self.eps)


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` inputs; statistics per channel ``C``."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.ndim}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)`` inputs; statistics per channel ``C``."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.ndim != 4:
            raise ValueError(f"expected 4D input (got {input.ndim}D input)")


class BatchNorm3d(_BatchNorm):
    """Batch norm over ``(N, C, D, H, W)`` inputs; statistics per channel ``C``."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.ndim != 5:
            raise ValueError(f"expected 5D input (got {input.ndim}D input)")


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics span every rank of ``process_group``.

    In training, with a process group of more than one rank, the forward all-reduces each
    channel's ``(sum, sum of squares, count)`` and the backward all-reduces
    ``(sum of grad, sum of grad * xhat)``: N ranks of B samples get the output, the input
    gradient and the running statistics of one process on N*B samples, uneven per-rank batches
    included (the statistics are count-weighted). ``weight``/``bias`` gradients are each rank's
    own sums, which ``DistributedDataParallel`` averages. Without an initialised process group,
    with a world of one, or in eval mode it is exactly ``BatchNorm``. Unlike torch's, which
    refuses CPU tensors, it runs on the CPU (any backend: mpi, threads) as well as on GPUs.

    Collectives: in training, ``forward`` (one all-reduce) and the ``backward`` through it (one
    all-reduce, when its input needs a gradient) must be run on every rank of the group, in the
    same order as the other ranks' SyncBatchNorm layers.

    Args:
        process_group: the group to synchronise over; None means the default group of the
            calling rank at each forward.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group=None, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {input.ndim}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        self._check_input_dim(input)
        if input.shape[1] == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        factor, use_batch_stats, mean, var = self._forward_settings()
        group = None
        if use_batch_stats and self.training and is_initialized():
            group = resolve_group(self.process_group)
            if group.size() == 1:
                group = None
        if group is None:
            return F.batch_norm(input, mean, var, self.weight, self.bias, use_batch_stats,
                                factor, self.eps)
        _bn.check_inputs(input, mean, var, self.weight, self.bias, True,
                         local_count_check=False)
        return _bn.BatchNorm.apply(input, self.weight, self.bias, mean, var, True, float(factor),
                                   float(self.eps), group)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """Replace every ``BatchNorm*d`` in ``module`` (recursively) by a ``SyncBatchNorm``.

        The new layers hold the same ``weight``/``bias`` Parameters and the same buffers, and
        keep the ``training`` flag, as torch's. Returns the converted module (``module`` itself
        when it is not a batch norm layer).
        """
        output = module
        if isinstance(module, _BatchNorm):
            output = cls(module.num_features, module.eps, module.momentum, module.affine,
                         module.track_running_stats, process_group,
                         bias=module.bias is not None)
            if module.affine:
                with no_grad():
                    output.weight = module.weight
                    output.bias = module.bias
            output.running_mean = module.running_mean
            output.running_var = module.running_var
            output.num_batches_tracked = module.num_batches_tracked
            output.training = module.training
        for name, child in module.named_children():
            output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return output
