"""``ddp.backends.cuda``: torch.backends.cuda's matmul switches.

ddp's GPU matrix products run in the arrays' own dtype through cuBLAS (``ddp/kernels``), never in
TF32 nor with reduced-precision reductions, so ``matmul.allow_tf32`` and friends are stored with
torch's defaults and have no effect. Per process, as in torch.
"""

from __future__ import annotations

from ddp import backend


class _MatmulSwitches:
    """``torch.backends.cuda.matmul``: attributes a script may set (no effect in ddp)."""

    def __init__(self) -> None:
        self.allow_tf32 = False
        self.allow_fp16_reduced_precision_reduction = True
        self.allow_bf16_reduced_precision_reduction = True

    def __repr__(self) -> str:
        return (f"matmul(allow_tf32={self.allow_tf32}, allow_fp16_reduced_precision_reduction="
                f"{self.allow_fp16_reduced_precision_reduction}, "
                f"allow_bf16_reduced_precision_reduction="
                f"{self.allow_bf16_reduced_precision_reduction})")


matmul = _MatmulSwitches()


def is_built() -> bool:
    """True when ddp can use CUDA here (CuPy importable with a GPU)."""
    return backend.cupy_module() is not None
