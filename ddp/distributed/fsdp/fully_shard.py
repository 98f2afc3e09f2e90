"""``fully_shard``: torch FSDP2's entry point (ZeRO stage 3)."""

from __future__ import annotations

import threading
import warnings
import weakref
from functools import partial

from ddp.backend import is_cupy_array
from ddp.distributed import api
from ddp.distributed.fsdp.fsdp_module import FSDPModule
from ddp.distributed.fsdp.policies import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy
from ddp.distributed.fsdp.root import FSDPRoot
from ddp.distributed.fsdp.sharded_param import ShardedParameter
from ddp.distributed.fsdp.unit import FSDPUnit
from ddp.distributed.process_group import ProcessGroup
from ddp.nn.modules.module import Module

_classes: dict[type, type] = {}
_classes_lock = threading.Lock()
# Parameters a unit replaced by sharded ones, by id (weakref equality would compare tensors).
_replaced: dict[int, weakref.ref] = {}
_offload_noted = False
_NO_MIXED_PRECISION = MixedPrecisionPolicy()  # frozen: safe to share as the default
_NO_OFFLOAD = OffloadPolicy()


def fully_shard(module: Module, *, mesh=None, reshard_after_forward: bool = True,
                shard_placement_fn=None, mp_policy: MixedPrecisionPolicy = _NO_MIXED_PRECISION,
                offload_policy: OffloadPolicy = _NO_OFFLOAD, ignored_params=None,
                process_group: ProcessGroup | None = None) -> Module:
    """Shard ``module``'s parameters over the ranks: each keeps a dim-0 chunk of every one.

    Apply it bottom-up: to each block first, then to the root. A unit manages the parameters
    of its subtree that no unit below it manages. Afterwards every managed parameter is a
    ``ShardedParameter`` (local storage: this rank's rows; ``shape``: global), so an optimizer
    built on ``model.parameters()`` keeps 1/N of the state. The module's class becomes
    ``FSDP<Cls>`` (``FSDPModule`` + ``Cls``). Every rank must call it alike, with the same
    weights (broadcast them first); it is not itself a collective.

    Args:
        module: the module to shard (changed in place and returned).
        mesh: the ranks to shard over: a ``ProcessGroup`` (ddp has no DeviceMesh); None: the
            default group. ``process_group`` is an alias.
        reshard_after_forward: free the gathered parameters after forward and all-gather them
            again before backward (True, 1.5x DDP's bytes) or keep them (False, 1x, more
            memory). The root keeps them either way.
        mp_policy: dtypes for the unsharded parameters, the gradient reduction, the outputs.
        offload_policy: ``OffloadPolicy()`` or ``CPUOffloadPolicy()``: GPU parameters keep
            their shards (so gradients and optimizer state) in host memory and the optimizer
            steps there; the all-gather copies them to the GPU (CPU parameters: a no-op).

    Returns:
        ``module``.

    Raises:
        ValueError: ``fully_shard`` was already applied to ``module``, or a parameter of its
            subtree is managed by a unit that is not below it.
        TypeError: a bad argument type.
        NotImplementedError: ``shard_placement_fn``, ``ignored_params``, an int
            ``reshard_after_forward``.
    """
    if not isinstance(module, Module):
        raise TypeError(f"fully_shard expects an nn.Module, got {type(module).__name__}")
    if isinstance(module, FSDPModule):
        raise ValueError(f"fully_shard has already been applied to this {type(module).__name__} "
                         f"module; apply it once per module")
    group = _process_group(mesh, process_group)
    if shard_placement_fn is not None or ignored_params:
        raise NotImplementedError("fully_shard: shard_placement_fn and ignored_params are not "
                                  "supported by ddp (every parameter is sharded on dim 0)")
    if not isinstance(reshard_after_forward, bool):
        raise NotImplementedError(f"fully_shard: reshard_after_forward must be a bool in ddp "
                                  f"(resharding to a smaller world is not supported), got "
                                  f"{reshard_after_forward!r}")
    if not isinstance(mp_policy, MixedPrecisionPolicy):
        raise TypeError(f"fully_shard: mp_policy must be a MixedPrecisionPolicy, got "
                        f"{type(mp_policy).__name__}")
    if not isinstance(offload_policy, OffloadPolicy):
        raise TypeError(f"fully_shard: offload_policy must be an OffloadPolicy, got "
                        f"{type(offload_policy).__name__}")
    managed = _managed_params(module)
    offload = isinstance(offload_policy, CPUOffloadPolicy) and _offloads(
        [p for _, _, p in managed])
    unit = FSDPUnit(module, managed, group, reshard_after_forward, mp_policy, offload)
    with _classes_lock:
        for _, _, p in managed:
            _replaced[id(p)] = weakref.ref(p, partial(_forget, id(p)))
    module.__class__ = _fsdp_class(type(module))
    object.__setattr__(module, "_fsdp_unit", unit)
    module.register_forward_pre_hook(_pre_forward, prepend=True, with_kwargs=True)
    module.register_forward_hook(_post_forward)
    return module


def _forget(key: int, ref: weakref.ref) -> None:
    if _replaced.get(key) is ref:  # not a newer parameter that got the same id
        del _replaced[key]


def _process_group(mesh, process_group) -> ProcessGroup:
    if mesh is not None and process_group is not None and mesh is not process_group:
        raise ValueError("fully_shard: pass the process group as mesh or as process_group, "
                         "not two different ones")
    group = mesh if mesh is not None else process_group
    if group is None:
        return api.get_default_group()
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"fully_shard: mesh must be a ddp ProcessGroup (ddp has no DeviceMesh), "
                        f"got {type(group).__name__}")
    return group


def _managed_params(module: Module) -> list:
    """``(name, [(owner, attr)], param)`` for each distinct parameter below ``module`` that no
    unit below it manages, in registration order."""
    found: dict[int, list] = {}
    stack = [("", module)]
    order: list[int] = []
    while stack:
        prefix, m = stack.pop()
        for attr, p in m.named_parameters(recurse=False, remove_duplicate=False):
            with _classes_lock:
                ref = _replaced.get(id(p))
                replaced = ref is not None and ref() is p
            if replaced:
                raise ValueError(
                    f"fully_shard: parameter '{prefix + attr}' is shared with a fully_shard "
                    f"unit below this {type(module).__name__} that already sharded it; tie "
                    f"shared parameters within one unit (apply fully_shard to a common "
                    f"ancestor only), as torch FSDP2 requires")
            if isinstance(p, ShardedParameter):
                raise ValueError(
                    f"fully_shard: parameter '{prefix + attr}' is already managed by a "
                    f"fully_shard unit that is not below this {type(module).__name__} (apply "
                    f"fully_shard bottom-up, and tie shared parameters within one unit)")
            if id(p) not in found:
                found[id(p)] = [prefix + attr, [], p]
                order.append(id(p))
            found[id(p)][1].append((m, attr))
        children = [(prefix + name + ".", child) for name, child in m.named_children()]
        for name, child in reversed(children):
            if not isinstance(child, FSDPModule):  # a unit below manages its own subtree
                stack.append((name, child))
    return [tuple(found[i]) for i in order]


def _offloads(params: list) -> bool:
    """Whether ``CPUOffloadPolicy`` moves these parameters' shards to host: GPU parameters
    (all of them) yes; CPU ones are there already (a no-op, noted once)."""
    global _offload_noted
    on_gpu = [is_cupy_array(p.array) for p in params]
    if any(on_gpu):
        if not all(on_gpu):
            raise ValueError("fully_shard: CPUOffloadPolicy needs the unit's parameters on one "
                             "device; some are on the GPU and some on the CPU")
        return True
    if not _offload_noted:
        _offload_noted = True
        warnings.warn("fully_shard: CPUOffloadPolicy on CPU parameters is a no-op (they already "
                      "live in host memory)", stacklevel=3)
    return False


def _fsdp_class(cls: type) -> type:
    with _classes_lock:
        if cls not in _classes:
            _classes[cls] = type(f"FSDP{cls.__name__}", (FSDPModule, cls),
                                 {"__module__": cls.__module__})
        return _classes[cls]


def _pre_forward(module, args: tuple, kwargs: dict):
    unit = module._fsdp_unit
    if unit.root is None:
        FSDPRoot(unit, [m._fsdp_unit for m in module.modules() if isinstance(m, FSDPModule)])
    return unit.root.pre_forward(unit, args, kwargs)


def _post_forward(module, args: tuple, output):
    unit = module._fsdp_unit
    return unit.root.post_forward(unit, output)
