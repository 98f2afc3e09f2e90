"""torch's pre-0.4 spellings: ``torch.FloatTensor(2, 3)``, ``torch.LongTensor([1, 2])``,
``isinstance(x, torch.FloatTensor)``, ``x.type(torch.DoubleTensor)`` (``Variable``: autograd).

Each legacy type is a constructor of CPU tensors of one dtype and, for ``isinstance``, the test
"a CPU tensor of that dtype" (as torch's). Sizes make an uninitialised tensor (as torch,
``torch.empty``), a sequence or an array makes a copy of the data, another tensor of the same
dtype is returned as it is, and of another dtype raises torch's ``TypeError``.
"""

from __future__ import annotations

from ddp import creation, dtypes
from ddp.tensor import Size, Tensor


class _LegacyTensorType(type):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, Tensor) and obj.dtype == cls.dtype and obj.device.type == "cpu"

    def __repr__(cls) -> str:
        return f"<class 'ddp.{cls.__name__}'>"


class _LegacyTensor(metaclass=_LegacyTensorType):
    dtype = None

    def __new__(cls, *args):
        if len(args) == 1 and isinstance(args[0], Tensor):
            data = args[0]
            if data.dtype != cls.dtype:
                raise TypeError(f"expected {cls.dtype} (got {data.dtype})")
            return data.detach()
        if not args:
            return creation.empty(0, dtype=cls.dtype, device="cpu")
        if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            return creation.empty(*args, dtype=cls.dtype, device="cpu")
        if len(args) == 1 and isinstance(args[0], Size):
            return creation.empty(*args[0], dtype=cls.dtype, device="cpu")
        if len(args) == 1:
            return creation.tensor(args[0], dtype=cls.dtype, device="cpu")
        raise TypeError(f"new() received an invalid combination of arguments: {args!r}")


def _legacy(name: str, dtype) -> type:
    return _LegacyTensorType(name, (_LegacyTensor,), {"dtype": dtype, "__doc__":
                             f"Legacy constructor of CPU {dtype} tensors (torch.{name})."})


FloatTensor = _legacy("FloatTensor", dtypes.float32)
DoubleTensor = _legacy("DoubleTensor", dtypes.float64)
HalfTensor = _legacy("HalfTensor", dtypes.float16)
BFloat16Tensor = _legacy("BFloat16Tensor", dtypes.bfloat16)
ByteTensor = _legacy("ByteTensor", dtypes.uint8)
CharTensor = _legacy("CharTensor", dtypes.int8)
ShortTensor = _legacy("ShortTensor", dtypes.int16)
IntTensor = _legacy("IntTensor", dtypes.int32)
LongTensor = _legacy("LongTensor", dtypes.int64)
BoolTensor = _legacy("BoolTensor", dtypes.bool_)

LEGACY_TYPES = {cls.__name__: cls for cls in (
    FloatTensor, DoubleTensor, HalfTensor, BFloat16Tensor, ByteTensor, CharTensor, ShortTensor,
    IntTensor, LongTensor, BoolTensor)}
