"""``autocast``: mixed-precision regions, torch's ``torch.amp.autocast``.

Inside ``with ddp.autocast("cpu"):`` the matrix products and convolutions run in bfloat16
(``dtype=ddp.float16`` selects half), losses and the other ops torch lists run in float32, and
the rest keep their inputs' dtype; the tables and the casting live in
``ddp.autograd.autocast_mode``. Parameters stay float32: the casts are graph nodes, so their
gradients arrive in float32. The state is per thread; a region nests inside another
(``enabled=False`` switches autocast off inside), and it also decorates a function.
"""

from __future__ import annotations

import functools
import warnings

from ddp import backend, dtypes
from ddp.autograd import autocast_mode as _mode
from ddp.autograd import tensor_type


class autocast:  # noqa: N801 - torch's name
    """Context manager and decorator: run the ops in it under autocast's policy.

    Args:
        device_type: ``"cpu"`` or ``"cuda"`` (``"cuda:0"`` is refused, as in torch).
        dtype: the lower precision dtype; None takes the device's default (bfloat16 on CPU,
            float16 on CUDA).
        enabled: False turns autocast off inside the region (also inside an enabled one).
        cache_enabled: keep the lower precision copy of each parameter for the whole region.
    """

    def __init__(self, device_type: str, dtype=None, enabled: bool = True,
                 cache_enabled: bool | None = None):
        if not isinstance(device_type, str):
            raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
        if device_type not in _mode.DEFAULT_DTYPES:
            raise RuntimeError(
                f"User specified an unsupported autocast device_type '{device_type}'; ddp "
                f"supports 'cpu' and 'cuda'")
        self.device = device_type
        self.fast_dtype = _mode.get_dtype(device_type) if dtype is None else dtype
        if not isinstance(self.fast_dtype, dtypes.dtype):
            self.fast_dtype = dtypes.from_numpy(dtypes.to_numpy_dtype(self.fast_dtype))
        self._enabled = bool(enabled)
        self._cache_enabled = (_mode.is_cache_enabled() if cache_enabled is None
                               else bool(cache_enabled))
        supported = _mode.SUPPORTED_DTYPES[device_type]
        if self._enabled and self.fast_dtype not in supported:
            names = ", ".join(f"torch.{d.name}" for d in supported)
            warnings.warn(
                f"In {device_type.upper()} autocast, but the target dtype is not supported. "
                f"Disabling autocast.\n{device_type.upper()} Autocast only supports dtypes of "
                f"{names} currently.", stacklevel=2)
            self._enabled = False
        if (self._enabled and device_type == "cuda" and self.fast_dtype == dtypes.bfloat16
                and backend.cupy_bfloat16_problem() is not None):
            raise RuntimeError(f"autocast('cuda', dtype=bfloat16): "
                               f"{backend.cupy_bfloat16_problem()}; use dtype=float16")
        self._tokens: list = []

    def __enter__(self):
        self._tokens.append(_mode.enter(self.device, self._enabled, self.fast_dtype,
                                        self._cache_enabled))
        return self

    def __exit__(self, *exc) -> bool:
        _mode.exit(self._tokens.pop())
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with autocast(self.device, self.fast_dtype, self._enabled, self._cache_enabled):
                return fn(*args, **kwargs)

        return wrapper


def is_autocast_available(device_type: str) -> bool:
    """True for the device types autocast knows (``"cpu"``, ``"cuda"``)."""
    return device_type in _mode.DEFAULT_DTYPES


def is_autocast_enabled(device_type: str | None = None) -> bool:
    """torch's ``torch.is_autocast_enabled``: without an argument, CUDA's state (as torch)."""
    return _mode.is_enabled("cuda" if device_type is None else device_type)


def get_autocast_dtype(device_type: str):
    """The dtype autocast casts to on ``device_type`` in this thread."""
    return _mode.get_dtype(device_type)


def is_autocast_cache_enabled() -> bool:
    return _mode.is_cache_enabled()


def clear_autocast_cache() -> None:
    _mode.clear_cache()


def _cast(value, device_type: str, dtype):
    """``value`` with its floating tensors of ``device_type`` (float64 excepted) cast to
    ``dtype``, recursing into lists, tuples and dicts (torch's ``torch.amp._cast``)."""
    if isinstance(value, tensor_type.Tensor):
        eligible = (value.is_floating_point() and value.device.type == device_type
                    and value.dtype != dtypes.float64)
        return value.to(dtype) if eligible else value
    if isinstance(value, dict):
        return {k: _cast(v, device_type, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, device_type, dtype) for v in value)
    return value


def custom_fwd(fwd=None, *, device_type: str, cast_inputs=None):
    """Decorate the ``forward`` of a custom ``autograd.Function`` (torch's
    ``torch.amp.custom_fwd``): with ``cast_inputs`` None it runs under the surrounding autocast
    state, recorded for :func:`custom_bwd`; with a dtype, inside an enabled autocast region its
    floating inputs of ``device_type`` are cast to it and it runs with autocast off."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if fwd is None:
        return functools.partial(custom_fwd, device_type=device_type, cast_inputs=cast_inputs)

    @functools.wraps(fwd)
    def decorate_fwd(*args, **kwargs):
        ctx = args[0]
        ctx._dtype = get_autocast_dtype(device_type)
        if cast_inputs is None:
            ctx._fwd_used_autocast = is_autocast_enabled(device_type)
            return fwd(*args, **kwargs)
        ctx._fwd_used_autocast = False
        if not is_autocast_enabled(device_type):
            return fwd(*args, **kwargs)
        with autocast(device_type, enabled=False):
            return fwd(*_cast(args, device_type, cast_inputs),
                       **_cast(kwargs, device_type, cast_inputs))

    return decorate_fwd


def custom_bwd(bwd=None, *, device_type: str):
    """Decorate the ``backward`` of a custom ``autograd.Function`` (torch's
    ``torch.amp.custom_bwd``): it runs under the autocast state its forward ran under."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if bwd is None:
        return functools.partial(custom_bwd, device_type=device_type)

    @functools.wraps(bwd)
    def decorate_bwd(*args, **kwargs):
        ctx = args[0]
        with autocast(device_type, dtype=ctx._dtype, enabled=ctx._fwd_used_autocast):
            return bwd(*args, **kwargs)

    return decorate_bwd
