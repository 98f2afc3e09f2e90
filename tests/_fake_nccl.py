"""A stand-in for ``cupy.cuda.nccl`` over mpi4py, for the NumPy "GPU" of ``_fake_cupy.py``.

The fake CuPy's arrays are host memory, so the pointers the ``nccl`` backend hands NCCL are host
addresses: this communicator views the memory behind them and moves it with MPI. It covers
the backend's code paths (stream choreography, host/device dispatch, dtypes, AVG) without a
GPU; the real check of NCCL itself is ``benchmarks/gpu_check.sh``. Worlds of one rank or of all
of ``COMM_WORLD`` only.
"""

from __future__ import annotations

import ctypes
import itertools
import types

import numpy as np

_DTYPES = [np.int8, np.uint8, np.int32, np.uint32, np.int64, np.uint64, np.float16, np.float32,
           np.float64]
_OPS = ["SUM", "PROD", "MIN", "MAX"]
_ids = itertools.count()


def _view(ptr: int, count: int, dtype: int) -> np.ndarray:
    item = np.dtype(_DTYPES[dtype])
    return np.frombuffer((ctypes.c_char * (count * item.itemsize)).from_address(ptr), item)


class NcclCommunicator:
    def __init__(self, ndev: int, uid, rank: int):
        from mpi4py import MPI

        self._mpi = MPI
        if ndev == 1:
            self._comm = MPI.COMM_SELF.Dup()
        elif ndev == MPI.COMM_WORLD.Get_size():
            self._comm = MPI.COMM_WORLD.Dup()
        else:
            raise NotImplementedError(f"fake NCCL: a world of {ndev} ranks is not supported")
        assert self._comm.Get_rank() == rank, (self._comm.Get_rank(), rank)

    def _op(self, op: int):
        return getattr(self._mpi, _OPS[op])

    def allReduce(self, sptr, rptr, count, dtype, op, stream):  # noqa: N802 - NCCL's names
        recv = _view(rptr, count, dtype)
        send = self._mpi.IN_PLACE if sptr == rptr else _view(sptr, count, dtype)
        self._comm.Allreduce(send, recv, op=self._op(op))

    def broadcast(self, sptr, rptr, count, dtype, root, stream):
        recv = _view(rptr, count, dtype)
        if sptr != rptr and self._comm.Get_rank() == root:
            recv[...] = _view(sptr, count, dtype)
        self._comm.Bcast(recv, root=root)

    def allGather(self, sptr, rptr, count, dtype, stream):  # noqa: N802
        size = self._comm.Get_size()
        self._comm.Allgather(_view(sptr, count, dtype), _view(rptr, count * size, dtype))

    def reduceScatter(self, sptr, rptr, count, dtype, op, stream):  # noqa: N802
        size = self._comm.Get_size()
        self._comm.Reduce_scatter_block(_view(sptr, count * size, dtype),
                                        _view(rptr, count, dtype), op=self._op(op))

    def destroy(self) -> None:
        self._comm.Free()


def module() -> types.ModuleType:
    """A ``cupy.cuda.nccl``-like module (install it with ``sys.modules``)."""
    mod = types.ModuleType("cupy.cuda.nccl")
    mod.available = True
    for i, name in enumerate(["INT8", "UINT8", "INT32", "UINT32", "INT64", "UINT64", "FLOAT16",
                              "FLOAT32", "FLOAT64"]):
        setattr(mod, f"NCCL_{name}", i)
    for i, name in enumerate(_OPS):
        setattr(mod, f"NCCL_{name}", i)
    mod.get_unique_id = lambda: ("fake-nccl", next(_ids))
    mod.NcclCommunicator = NcclCommunicator
    return mod
