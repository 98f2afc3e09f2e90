"""The compiled CPU kernels' seam (``ddp.kernels.jit``, ``ddp.kernels.cpu``): who runs what.

The kernels' numbers are tested where each kernel is (tests parametrized by the ``kernel_path``
fixture run the reference and the compiled path against the same float64 truth)."""

import subprocess
import sys

import numpy as np

from ddp import kernels
from ddp.kernels import cpu, jit, reference


def test_dispatch_picks_compiled_kernels_for_large_float_numpy_arrays(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", True)
    big = np.zeros(jit.MIN_ELEMENTS, dtype=np.float32)
    assert kernels._impl(big) is cpu
    assert kernels._impl(big.astype(np.float64)) is cpu
    assert kernels._impl(big[:-1]) is reference  # below the size where a kernel pays
    assert kernels._impl(big.astype(np.float16)) is reference  # no compiled 16-bit kernels
    monkeypatch.setattr(jit, "ENABLED", False)  # DDP_JIT=0
    assert kernels._impl(big) is reference


def test_compiled_kernel_handles_strided_input_through_the_reference(kernel_path):
    x = np.linspace(-5, 5, 2 * 40000, dtype=np.float32)[::2]  # not contiguous
    y, cdf = kernels.gelu_forward(x, "none")
    y_ref, cdf_ref = reference.gelu_forward(np.ascontiguousarray(x), "none")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(cdf, cdf_ref)


def test_import_ddp_does_not_import_numba():
    code = "import sys, ddp; ddp.nn.functional.gelu(ddp.ones(4)); print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_jit_switch_is_read_from_the_environment():
    code = "import ddp.kernels.jit as j; print(j.ENABLED)"
    env_off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**__import__("os").environ, "DDP_JIT": "0"})
    assert env_off.stdout.strip() == "False"
