"""Process-wide numerics switches torch scripts set: deterministic algorithms and the float32
matmul precision. ddp records them and changes nothing:

* it has no alternative kernels to choose between, so ``use_deterministic_algorithms(True)``
  selects nothing; on the CPU a run repeats bitwise with the same thread count, and on the GPU
  embedding backward's atomic scatter-add (docs/gpu.md) stays as it is, without the error
  torch raises for such ops;
* its matrix products run in the arrays' own dtype, never in TF32 or bfloat16, whatever
  ``set_float32_matmul_precision`` says.

Per process, as in torch.
"""

from __future__ import annotations

import warnings

_PRECISIONS = ("highest", "high", "medium")
_state = {"deterministic": False, "warn_only": False, "matmul_precision": "highest"}


def use_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """Record torch's deterministic-algorithms switch (see the module docstring).

    Raises:
        TypeError: ``mode`` or ``warn_only`` is not a bool (torch's check).
    """
    for name, value in (("mode", mode), ("warn_only", warn_only)):
        if not isinstance(value, bool):
            raise TypeError(f"use_deterministic_algorithms(): argument '{name}' must be bool, "
                            f"not {type(value).__name__}")
    _state.update(deterministic=mode, warn_only=warn_only)


def are_deterministic_algorithms_enabled() -> bool:
    return _state["deterministic"]


def is_deterministic_algorithms_warn_only_enabled() -> bool:
    return _state["warn_only"]


def set_float32_matmul_precision(precision: str) -> None:
    """Record ``"highest"``, ``"high"`` or ``"medium"``; ddp multiplies in full float32 always.

    Another value warns and has no effect, as in torch.
    """
    if precision not in _PRECISIONS:
        warnings.warn(f"{precision} is not one of 'highest', 'high', or 'medium'; the current "
                      "set_float32_matmul_precision call has no effect.", UserWarning,
                      stacklevel=2)
        return
    _state["matmul_precision"] = precision


def get_float32_matmul_precision() -> str:
    return _state["matmul_precision"]
