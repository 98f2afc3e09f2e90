"""``Tensor``: an n-dimensional array (NumPy or CuPy) that records how it was computed.

A tensor holds its array in ``.array``. When grad mode is on and an op reads a tensor with
``requires_grad=True``, the result remembers the op in ``grad_fn``; ``backward()`` then walks
those nodes and adds gradients into the ``.grad`` of the leaves (tensors made by the user, such as
parameters). Non-leaf tensors keep ``.grad`` None unless ``retain_grad()`` was called.

Operators and op methods (``x + y``, ``x.sum()``) come from the ``TensorOps`` mixin in
``ddp/tensor_ops.py``: each calls one function of ``ddp.ops``.
"""

from __future__ import annotations

import weakref
from types import MappingProxyType

import numpy as np

from ddp import backend, dtypes, ops, random
from ddp.autograd import engine, tensor_type
from ddp.autograd.function import AccumulateGrad
from ddp.autograd.grad_mode import is_grad_enabled, no_grad
from ddp.device import as_device, device_of, move_array, same_device
from ddp.ops._util import shape_arg
from ddp.tensor_ops import TensorOps
from ddp.tensor_repr import tensor_repr
from ddp.utils.hooks import RemovableHandle

_NO_HOOKS = MappingProxyType({})  # read-only: registering replaces it with a dict


class Tensor(TensorOps):
    """A multi-dimensional array with autograd; see the module docstring."""

    __array_priority__ = 1000  # numpy_array * tensor calls Tensor.__rmul__
    # Defaults shared by every tensor until one is set on it: an op's output never writes them,
    # which keeps its construction (hundreds per step) to four attribute writes.
    _accumulator = None  # weakref to this leaf's AccumulateGrad node
    _grad_hooks = _NO_HOOKS  # id -> hook(grad); a dict of its own once one is registered
    _post_accumulate_hooks = _NO_HOOKS
    _grad_storage_hooks = _NO_HOOKS  # id -> hook(leaf) -> array | None (the next .grad's memory)
    _retains_grad = False

    def __init__(self, data=None, *, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.array
        elif data is None:
            data = np.empty((0,), dtype=dtypes.default_float.np_dtype)
        elif isinstance(data, (list, tuple, float, int)):
            data = np.asarray(data, dtype=dtypes.default_float.np_dtype)  # torch.Tensor(list)
        elif not isinstance(data, np.ndarray) and not backend.is_cupy_array(data):
            data = np.asarray(data)
        if isinstance(data, np.generic):
            data = np.asarray(data)
        self.array = data
        self.grad: Tensor | None = None
        self.grad_fn = None
        self._requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from_op(cls, array, grad_fn) -> Tensor:
        """Wrap an op's result; internal and fast (no validation)."""
        t = Tensor.__new__(Tensor)
        if type(array) is not np.ndarray and isinstance(array, np.generic):
            array = np.asarray(array)
        t.array = array
        t.grad = None
        t.grad_fn = grad_fn
        t._requires_grad = grad_fn is not None
        return t

    # ----------------------------------------------------------------------------- attributes
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set ``requires_grad`` on a leaf; only floating tensors may require grad."""
        if self.grad_fn is not None:
            if not requires_grad:
                raise RuntimeError(
                    "you can only change requires_grad flags of leaf variables. If you want to "
                    "use a computed variable in a subgraph that doesn't require differentiation "
                    "use var_no_grad = var.detach()."
                )
            return self
        if requires_grad and not self.dtype.is_floating_point:
            raise RuntimeError(
                f"only Tensors of floating point dtype can require gradients, got {self.dtype}"
            )
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def data(self) -> Tensor:
        """A tensor sharing this one's storage, detached from the graph (as torch's ``.data``)."""
        return Tensor._from_op(self.array, None)

    @data.setter
    def data(self, value: Tensor) -> None:
        self.array = value.array if isinstance(value, Tensor) else np.asarray(value)

    @property
    def shape(self) -> Size:
        return Size(self.array.shape)

    @property
    def dtype(self) -> dtypes.dtype:
        return dtypes.from_numpy(self.array.dtype)

    @property
    def device(self):
        return device_of(self.array)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def is_xpu(self) -> bool:
        """Intel GPUs: never, in ddp (scripts test it beside ``is_cuda``)."""
        return False

    @property
    def is_mps(self) -> bool:
        """Apple GPUs: never, in ddp."""
        return False

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def dim(self) -> int:
        return self.array.ndim

    def size(self, dim: int | None = None):
        if dim is None:
            return Size(self.array.shape)
        return self.array.shape[dim]

    def numel(self) -> int:
        return int(self.array.size)

    def nelement(self) -> int:
        return int(self.array.size)

    def element_size(self) -> int:
        return self.array.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def is_contiguous(self) -> bool:
        return bool(self.array.flags.c_contiguous)

    def contiguous(self) -> Tensor:
        if self.array.flags.c_contiguous:
            return self
        return ops.contiguous(self)

    def data_ptr(self) -> int:
        if isinstance(self.array, np.ndarray):
            return self.array.__array_interface__["data"][0]
        return self.array.data.ptr

    # ------------------------------------------------------------------------------ conversion
    def item(self):
        if self.array.size != 1:
            raise RuntimeError(
                f"a Tensor with {self.array.size} elements cannot be converted to Scalar"
            )
        return self.array.reshape(()).item()

    def tolist(self):
        return backend.to_numpy(self.array).tolist()

    def numpy(self) -> np.ndarray:
        """The NumPy array behind a CPU tensor (shared storage); refuses tensors needing grad."""
        if self._requires_grad:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                "instead."
            )
        if not isinstance(self.array, np.ndarray):
            raise TypeError(
                f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to "
                f"copy the tensor to host memory first."
            )
        return self.array

    def __array__(self, dtype=None, copy=None):
        array = backend.to_numpy(self.array)
        return array if dtype is None else array.astype(dtype)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.is_floating_point or self.array.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __bool__(self) -> bool:
        if self.array.size != 1:
            raise RuntimeError(
                f"Boolean value of Tensor with {self.array.size} values is ambiguous"
            )
        return bool(self.item())

    def __len__(self) -> int:
        if self.array.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.array.shape[0]

    def __iter__(self):
        if self.array.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.array.shape[0]))

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return tensor_repr(self)

    def __format__(self, spec: str) -> str:
        if self.array.ndim == 0:
            return format(self.item(), spec)
        return object.__format__(self, spec)

    def __reduce_ex__(self, protocol):
        raise TypeError("ddp tensors are not pickled; use ddp.save / ddp.load")

    def __deepcopy__(self, memo: dict) -> Tensor:
        """Copy a leaf (data, requires_grad, grad) so that ``copy.deepcopy(module)`` works."""
        if self.grad_fn is not None:
            raise RuntimeError("Only Tensors created explicitly by the user (graph leaves) "
                               "support the deepcopy protocol at the moment.")
        if id(self) not in memo:
            result = Tensor(self.array.copy(), requires_grad=self._requires_grad)
            if self.grad is not None:
                result.grad = Tensor(self.grad.array.copy())
            memo[id(self)] = result
        return memo[id(self)]

    # ------------------------------------------------------------------------ dtype / device
    def to(self, *args, **kwargs) -> Tensor:
        """``to(dtype)``, ``to(device)``, ``to(device, dtype)`` or ``to(other_tensor)``."""
        target_device = kwargs.pop("device", None)
        target_dtype = kwargs.pop("dtype", None)
        kwargs.pop("non_blocking", None)
        copy = kwargs.pop("copy", False)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
        for arg in args:
            if isinstance(arg, Tensor):
                target_device, target_dtype = arg.device, arg.dtype
            elif isinstance(arg, dtypes.dtype) or arg in (float, int, bool):
                target_dtype = arg
            else:
                target_device = arg
        result = self
        if target_device is not None:
            dev = as_device(target_device)
            if not same_device(dev, self.device):
                result = ops.to_device(result, dev)
        if target_dtype is not None:
            np_dtype = dtypes.to_numpy_dtype(target_dtype)
            if np_dtype != result.array.dtype:
                result = ops.cast(result, np_dtype)
        if copy and result is self:
            result = self.clone()
        return result

    def type(self, dtype=None):
        """The legacy type name (``"ddp.FloatTensor"``), or a copy in ``dtype``: a dtype, a
        legacy type (``ddp.DoubleTensor``) or its name (``"torch.LongTensor"``)."""
        if dtype is None:
            return f"ddp.{_TYPE_NAMES.get(self.dtype.name, 'Tensor')}"
        if isinstance(dtype, str):
            name = dtype.rpartition(".")[2]
            by_name = {legacy: dtypes.get_dtype(numpy_name)
                       for numpy_name, legacy in _TYPE_NAMES.items()}
            if name not in by_name:
                raise ValueError(f"invalid type: '{dtype}'")
            dtype = by_name[name]
        elif isinstance(getattr(dtype, "dtype", None), dtypes.dtype):
            dtype = dtype.dtype  # a legacy type such as ddp.FloatTensor
        return self.to(dtype)

    def cuda(self, device=None) -> Tensor:
        return self.to("cuda" if device is None else as_device(device))

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def float(self) -> Tensor:
        return self.to(dtypes.float32)

    def double(self) -> Tensor:
        return self.to(dtypes.float64)

    def half(self) -> Tensor:
        return self.to(dtypes.float16)

    def bfloat16(self) -> Tensor:
        return self.to(dtypes.bfloat16)

    def long(self) -> Tensor:
        return self.to(dtypes.int64)

    def int(self) -> Tensor:
        return self.to(dtypes.int32)

    def bool(self) -> Tensor:
        return self.to(dtypes.bool_)

    # -------------------------------------------------------------------------------- autograd
    def _gradient_edge(self):
        """The node that receives this tensor's gradient: ``grad_fn`` or the leaf's sink."""
        if self.grad_fn is not None:
            return self.grad_fn
        node = self._accumulator() if self._accumulator is not None else None
        if node is None:
            node = AccumulateGrad(self)
            self._accumulator = weakref.ref(node)
        return node

    def backward(self, gradient=None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs=None) -> None:
        """Accumulate d(self)/d(leaf) into every reachable leaf's ``.grad``.

        Args:
            gradient: d(loss)/d(self); may be omitted only when ``self`` has one element.
            retain_graph: keep saved values so backward can run through the graph again.

        Raises:
            RuntimeError: ``self`` does not require grad, is not a scalar and no ``gradient``
                was given, ``gradient`` has the wrong shape, or the graph was already freed.
        """
        if create_graph:
            raise NotImplementedError("ddp does not support create_graph=True (double backward)")
        if inputs is not None:
            raise NotImplementedError("backward(inputs=...) is not supported")
        engine.backward([self], None if gradient is None else [gradient],
                        retain_graph=retain_graph)

    def register_hook(self, hook) -> RemovableHandle:
        """Call ``hook(grad)`` when this tensor's gradient is computed; it may return a new one."""
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is not None:
            if self.grad_fn.pre_hooks is None:
                self.grad_fn.pre_hooks = {}
            registry = self.grad_fn.pre_hooks
        else:
            if self._grad_hooks is _NO_HOOKS:
                self._grad_hooks = {}
            registry = self._grad_hooks
        handle = RemovableHandle(registry)
        registry[handle.id] = hook
        return handle

    def register_post_accumulate_grad_hook(self, hook) -> RemovableHandle:
        """Call ``hook(self)`` on a leaf as soon as its ``.grad`` is final for this backward."""
        if self.grad_fn is not None:
            raise RuntimeError(
                "post accumulate grad hooks cannot be registered on non-leaf tensors"
            )
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self._post_accumulate_hooks is _NO_HOOKS:
            self._post_accumulate_hooks = {}
        handle = RemovableHandle(self._post_accumulate_hooks)
        self._post_accumulate_hooks[handle.id] = hook
        return handle

    def register_grad_storage_hook(self, hook) -> RemovableHandle:
        """Let ``hook(self)`` supply the memory of this leaf's ``.grad`` (a ddp extension).

        When backward is about to give this leaf a gradient while ``.grad`` is None, it asks
        the most recently registered hook first; the first array returned (this tensor's shape,
        dtype and array type) receives the gradient and becomes ``.grad``'s memory instead of a
        fresh array, so later backwards accumulate into it in place. A hook returning None
        leaves the choice to the next one, and finally to backward (a fresh array). Torch has no
        public equivalent: its DDP reducer does this internally for ``gradient_as_bucket_view``,
        and so does ddp's (the array is the parameter's slot of a communication bucket).

        Raises:
            RuntimeError: on a non-leaf tensor or one that does not require grad.
        """
        if self.grad_fn is not None:
            raise RuntimeError("grad storage hooks cannot be registered on non-leaf tensors")
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self._grad_storage_hooks is _NO_HOOKS:
            self._grad_storage_hooks = {}
        handle = RemovableHandle(self._grad_storage_hooks)
        self._grad_storage_hooks[handle.id] = hook
        return handle

    def retain_grad(self) -> None:
        """Keep ``.grad`` on a non-leaf tensor after backward."""
        if self.grad_fn is None or self._retains_grad:
            return
        if not self._requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        self._retains_grad = True
        ref = weakref.ref(self)

        def keep(grad: Tensor) -> None:
            tensor = ref()
            if tensor is None:
                return
            if tensor.grad is None:
                tensor.grad = Tensor(grad.array.copy())
            else:
                tensor.grad.array = tensor.grad.array + grad.array

        self.register_hook(keep)

    def detach(self) -> Tensor:
        """A tensor sharing storage with this one, outside the graph."""
        return Tensor._from_op(self.array, None)

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self._requires_grad = False
        return self

    def clone(self, memory_format=None) -> Tensor:
        return ops.clone(self)

    # -------------------------------------------------------------------------------- in place
    def _check_inplace(self) -> bool:
        """True when an in-place op must be recorded in the graph (non-leaf under grad mode).

        A recorded in-place op is computed out of place and the tensor rebound to the result
        (``_rebase``), which would silently detach a *view* from the tensor it views (torch
        rewrites the base's graph instead, CopySlices): such ops raise, saying so.
        """
        if not is_grad_enabled():
            return False
        node = self.grad_fn
        if node is None:
            if self._requires_grad:
                raise RuntimeError(
                    "a leaf Variable that requires grad is being used in an in-place operation."
                )
            return False
        if getattr(node, "returns_view", False):
            if type(node.next_edges[0]) is AccumulateGrad:
                raise RuntimeError(
                    "a view of a leaf Variable that requires grad is being used in an in-place "
                    "operation."
                )
            raise RuntimeError(
                f"in-place operation on a view ({node.name()}) of a tensor that requires grad: "
                "ddp records in-place ops out of place, which would leave the viewed tensor "
                "unchanged (torch rewrites its graph instead). Use the out-of-place op, or "
                "clone() the view first."
            )
        return True

    def _rebase(self, result: Tensor) -> Tensor:
        """Make ``self`` the (recorded) result of an in-place op done out of place."""
        self.array = result.array
        self.grad_fn = result.grad_fn
        self._requires_grad = result._requires_grad
        return self

    def _inplace(self, fn, *args) -> Tensor:
        """Apply binary/unary ``fn`` in place: in the array when no graph needs it."""
        if self._check_inplace() or any(
            isinstance(a, Tensor) and a._requires_grad and is_grad_enabled() for a in args
        ):
            return self._rebase(fn(self, *args))
        with no_grad():
            result = fn(self, *args)
        _assign(self.array, result.array)
        return self

    def add_(self, other, alpha=1) -> Tensor:
        return self._inplace(lambda a, b: ops.add(a, b, alpha=alpha), other)

    def sub_(self, other, alpha=1) -> Tensor:
        return self._inplace(lambda a, b: ops.sub(a, b, alpha=alpha), other)

    def mul_(self, other) -> Tensor:
        return self._inplace(ops.mul, other)

    def div_(self, other) -> Tensor:
        return self._inplace(ops.div, other)

    def pow_(self, exponent) -> Tensor:
        return self._inplace(ops.pow, exponent)

    def clamp_(self, min=None, max=None) -> Tensor:  # noqa: A002
        return self._inplace(lambda a: ops.clamp(a, min, max))

    clip_ = clamp_

    def masked_fill_(self, mask, value) -> Tensor:
        return self._inplace(lambda a, m: ops.masked_fill(a, m, value), mask)

    def relu_(self) -> Tensor:
        return self._inplace(ops.relu)

    def neg_(self) -> Tensor:
        return self._inplace(ops.neg)

    def addcmul_(self, t1, t2, value=1) -> Tensor:
        return self._inplace(lambda a, b, c: ops.add(a, ops.mul(b, c), alpha=value), t1, t2)

    def addcdiv_(self, t1, t2, value=1) -> Tensor:
        return self._inplace(lambda a, b, c: ops.add(a, ops.div(b, c), alpha=value), t1, t2)

    def lerp_(self, end, weight) -> Tensor:
        return self._inplace(lambda a, b: ops.add(a, ops.mul(ops.sub(b, a), weight)), end)

    def copy_(self, src) -> Tensor:
        """Copy ``src`` (broadcast, cast, moved across devices) into this tensor's storage."""
        if self._check_inplace() or (isinstance(src, Tensor) and src._requires_grad
                                     and is_grad_enabled()):
            src_t = src if isinstance(src, Tensor) else Tensor(np.asarray(src))
            return self._rebase(ops.copy_into(self, src_t))
        value = src.array if isinstance(src, Tensor) else src
        value = move_array(value, self.device) if hasattr(value, "shape") else value
        _assign(self.array, value)
        return self

    def fill_(self, value) -> Tensor:
        if self._check_inplace():
            return self._rebase(ops.full_like_graph(self, value))
        self.array[...] = value.item() if isinstance(value, Tensor) else value
        return self

    def zero_(self) -> Tensor:
        return self.fill_(0)

    def uniform_(self, a: float = 0.0, b: float = 1.0, generator=None) -> Tensor:
        with no_grad():
            self.copy_(random.uniform_array(self.array.shape, a, b, self.array.dtype, generator))
        return self

    def normal_(self, mean: float = 0.0, std: float = 1.0, generator=None) -> Tensor:
        with no_grad():
            self.copy_(random.normal_array(self.array.shape, mean, std, self.array.dtype,
                                           generator))
        return self

    def __setitem__(self, index, value) -> None:
        if self._check_inplace() or (isinstance(value, Tensor) and value._requires_grad
                                     and is_grad_enabled()):
            self._rebase(ops.index_put(self, index, value))
            return
        index = ops.normalize_index(index, self.array.shape)
        self.array[index] = value.array if isinstance(value, Tensor) else value

    def scatter_(self, dim, index, src=None, value=None, *, reduce=None) -> Tensor:
        return self._inplace(lambda a, s: ops.scatter(a, dim, index, s, value, reduce=reduce),
                             src)

    def scatter_add_(self, dim, index, src) -> Tensor:
        return self._inplace(lambda a, s: ops.scatter_add(a, dim, index, s), src)

    # ------------------------------------------------- new tensors like this one (new_*)
    def _new(self, fill, shape: tuple, dtype, device, requires_grad: bool) -> Tensor:
        """``fill(shape, np_dtype)`` (a host array) with this tensor's dtype and device unless
        ``dtype``/``device`` are given."""
        np_dtype = self.array.dtype if dtype is None else dtypes.to_numpy_dtype(dtype)
        target = self.device if device is None else as_device(device)
        return Tensor(move_array(fill(shape, np_dtype), target), requires_grad=requires_grad)

    def new_zeros(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        """Zeros of ``size`` with this tensor's dtype and device unless given."""
        return self._new(np.zeros, shape_arg(size), dtype, device, requires_grad)

    def new_ones(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self._new(np.ones, shape_arg(size), dtype, device, requires_grad)

    def new_empty(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self._new(np.empty, shape_arg(size), dtype, device, requires_grad)

    def new_full(self, size, fill_value, *, dtype=None, device=None,
                 requires_grad=False) -> Tensor:
        return self._new(lambda shape, dt: np.full(shape, fill_value, dt), shape_arg((size,)),
                         dtype, device, requires_grad)

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False) -> Tensor:
        """A copy of ``data`` with this tensor's dtype and device unless given (torch)."""
        array = backend.to_numpy(data.array) if isinstance(data, Tensor) else np.array(data)
        return self._new(lambda shape, dt: array.astype(dt), array.shape, dtype, device,
                         requires_grad)

    def __iadd__(self, other):
        return self.add_(other)

    def __isub__(self, other):
        return self.sub_(other)

    def __imul__(self, other):
        return self.mul_(other)

    def __itruediv__(self, other):
        return self.div_(other)


class Size(tuple):
    """Shape of a tensor: a tuple that prints as torch's does, ``torch.Size([2, 3])``.

    The name in the repr is torch's, so that programs written for torch print what they print
    under torch; slices and sums with tuples stay ``Size``.
    """

    def __repr__(self) -> str:
        return f"torch.Size({list(self)})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Size(tuple.__getitem__(self, index))
        return tuple.__getitem__(self, index)

    def __add__(self, other):
        if not isinstance(other, tuple):
            return NotImplemented
        return Size(tuple.__add__(self, other))

    def __radd__(self, other):
        if not isinstance(other, tuple):
            return NotImplemented
        return Size(tuple.__add__(other, self))

    def numel(self) -> int:
        n = 1
        for s in self:
            n *= s
        return n


_TYPE_NAMES = {
    "float16": "HalfTensor", "bfloat16": "BFloat16Tensor", "float32": "FloatTensor",
    "float64": "DoubleTensor",
    "int8": "CharTensor", "uint8": "ByteTensor", "int16": "ShortTensor", "int32": "IntTensor",
    "int64": "LongTensor", "bool": "BoolTensor",
}


def _assign(target, value) -> None:
    """Write ``value`` into ``target`` in place, broadcasting and casting like torch's copy_."""
    if hasattr(value, "dtype") and value.dtype != target.dtype:
        value = value.astype(target.dtype)
    target[...] = value


tensor_type.bind_tensor_class(Tensor)  # last: autograd and the ops build Tensors from here on
