"""torch FSDP2's policies: ``MixedPrecisionPolicy``, ``OffloadPolicy``, ``CPUOffloadPolicy``."""

from __future__ import annotations

from dataclasses import dataclass

from ddp import dtypes


@dataclass(frozen=True)
class MixedPrecisionPolicy:
    """Dtypes of a fully sharded unit (torch's fields and defaults).

    Args:
        param_dtype: dtype of the unsharded parameters (the all-gather and the forward/backward
            compute); None: the parameters' own dtype. The sharded parameters and the optimizer
            keep theirs.
        reduce_dtype: dtype of the gradient reduce-scatter; None: ``param_dtype``.
        output_dtype: cast the unit's floating outputs to it; None: no cast.
        cast_forward_inputs: cast the unit's floating inputs to ``param_dtype``.
    """

    param_dtype: dtypes.dtype | None = None
    reduce_dtype: dtypes.dtype | None = None
    output_dtype: dtypes.dtype | None = None
    cast_forward_inputs: bool = True

    def __post_init__(self):
        for name in ("param_dtype", "reduce_dtype", "output_dtype"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, dtypes.dtype)
                                          and value.is_floating_point):
                raise TypeError(f"MixedPrecisionPolicy: {name} must be a floating ddp dtype "
                                f"or None, got {value!r}")


@dataclass(frozen=True)
class OffloadPolicy:
    """No offloading (torch's default policy)."""


@dataclass(frozen=True)
class CPUOffloadPolicy(OffloadPolicy):
    """Keep sharded parameters, gradients and optimizer state in host memory.

    GPU parameters: each rank's shards live on the host, so do their gradients and the state
    of an optimizer built on ``model.parameters()``, which therefore steps on the host; each
    all-gather copies the shards to the GPU and each reduce-scatter's result comes back. On the
    CPU this is what happens anyway (a no-op, noted once). ``pin_memory`` is accepted for
    torch's signature; ddp's host shards are pageable NumPy arrays.
    """

    pin_memory: bool = True
