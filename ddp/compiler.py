"""``ddp.compile`` (defined here, in ``ddp.compiler``): torch.compile's signature, no compiler.

``model = torch.compile(model)`` is common in training scripts. ddp runs eagerly and has no
graph compiler: the module or function comes back unchanged (the same object, so its
``state_dict`` keys have no ``_orig_mod.`` prefix, unlike torch's wrapper), with one warning
per process saying so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

_MODES = ("default", "lite", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
_warned = False


def compile(model: Callable | None = None, *, fullgraph: bool = False,  # noqa: A001
            dynamic: bool | None = None, backend: Any = None, mode: str | None = None,
            options: dict | None = None, disable: bool = False, **unused: Any) -> Any:
    """Return ``model`` unchanged (or, called without it, a decorator that does).

    Raises:
        RuntimeError: an unknown ``mode`` (torch's message).
    """
    global _warned
    if mode is not None and mode not in _MODES:
        raise RuntimeError(f"Unrecognized mode={mode}, should be one of: {', '.join(_MODES)}")
    if model is None:
        return lambda fn: compile(fn, fullgraph=fullgraph, dynamic=dynamic, backend=backend,
                                  mode=mode, options=options, disable=disable)
    if not (_warned or disable):
        _warned = True
        warnings.warn("torch.compile: ddp runs eagerly and has no compiler; "
                      f"{type(model).__name__} is returned unchanged", UserWarning, stacklevel=2)
    return model
