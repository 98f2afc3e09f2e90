"""``ddp.onnx``: torch.onnx's entry points; ddp cannot export ONNX.

ddp runs each op eagerly on NumPy/CuPy arrays and keeps no traced or scripted program, which is
what an ONNX exporter translates. ``is_in_onnx_export()`` (which some models test inside
``forward``) is therefore always False, and :func:`export` raises.
"""

from __future__ import annotations

from typing import Any


def is_in_onnx_export() -> bool:
    """False: no export is ever running in ddp."""
    return False


def export(model: Any, args: Any = (), f: Any = None, *unused_args: Any, **unused_kwargs: Any):
    """Raise: ddp cannot export ONNX graphs.

    Raises:
        NotImplementedError: always; the message names the model and the way out (copy the
            weights into the same model built with PyTorch and export there).
    """
    raise NotImplementedError(
        f"torch.onnx.export({type(model).__name__}, ...): ddp cannot export ONNX graphs (it runs "
        "ops eagerly and records no traced program to translate). Build the same model with "
        "PyTorch, copy the weights over (torch_model.load_state_dict({k: torch.from_numpy("
        "v.numpy()) for k, v in model.state_dict().items()})) and call torch.onnx.export there."
    )
