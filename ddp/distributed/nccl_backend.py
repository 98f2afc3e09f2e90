"""The ``nccl`` backend: GPU collectives through CuPy's NCCL bindings, bootstrapped over MPI.

Rank 0 creates the NCCL unique id and sends it to the others with mpi4py; each rank then
builds a ``cupy.cuda.nccl.NcclCommunicator`` on GPU ``local_rank % device_count``. NCCL refuses
two ranks on one GPU, so run one rank per GPU (``mpiexec -n <GPUs per node>``).

Ordering: every collective runs on the group's own CUDA stream. Before it starts, that stream
waits on an event recorded on the caller's current (compute) stream, so it sees every kernel
queued before the call; afterwards the caller's stream waits on an event recorded after the
collective, so later kernels see the result. The host does not block (as in torch): the result
is ready for any kernel or copy queued afterwards on the caller's stream. ``Work.wait()`` of an
async collective does the same stream wait.

Host (NumPy) arrays, object collectives, ``barrier`` and the mismatch check go through the MPI
group underneath, through its public methods, so code that mixes small host buffers (ZeRO's
norms and flags) keeps working. That MPI group does not check its own collectives: this group
checks every collective, host ones included, before handing it on.
"""

from __future__ import annotations

import importlib
from typing import Any

from ddp.backend import cupy_module, cupy_unavailable_reason, is_cupy_array
from ddp.distributed.mpi_backend import MPIProcessGroup, init_mpi_world
from ddp.distributed.process_group import ProcessGroup
from ddp.distributed.reduce_op import ReduceOp, Work

_DTYPES = {  # NumPy dtype char -> name of the NCCL constant in cupy.cuda.nccl
    "b": "NCCL_INT8", "B": "NCCL_UINT8", "?": "NCCL_UINT8", "i": "NCCL_INT32",
    "I": "NCCL_UINT32", "l": "NCCL_INT64", "L": "NCCL_UINT64", "q": "NCCL_INT64",
    "Q": "NCCL_UINT64", "e": "NCCL_FLOAT16", "f": "NCCL_FLOAT32", "d": "NCCL_FLOAT64",
}
_OPS = {ReduceOp.SUM: "NCCL_SUM", ReduceOp.AVG: "NCCL_SUM", ReduceOp.PRODUCT: "NCCL_PROD",
        ReduceOp.MIN: "NCCL_MIN", ReduceOp.MAX: "NCCL_MAX"}


def nccl_module():
    """``cupy.cuda.nccl``; RuntimeError saying why when CuPy, a GPU or libnccl is missing."""
    cp = cupy_module()
    if cp is None:
        raise RuntimeError(f"backend 'nccl' needs CuPy and a GPU: {cupy_unavailable_reason()}")
    try:  # a submodule that ``import cupy`` does not load: import it by name
        nccl = importlib.import_module(cp.__name__ + ".cuda.nccl")
    except ImportError as exc:
        raise RuntimeError(f"backend 'nccl': CuPy's NCCL bindings are not importable "
                           f"({exc})") from exc

    if not getattr(nccl, "available", True):
        raise RuntimeError("backend 'nccl': CuPy cannot load libnccl.so.2 (install the "
                           "nvidia-nccl-cu13 wheel or NCCL itself)")
    return nccl


def _nccl_dtype(nccl, array) -> int:
    try:
        return getattr(nccl, _DTYPES[array.dtype.char])
    except KeyError:
        raise TypeError(f"backend 'nccl' does not support dtype {array.dtype}") from None


class NCCLProcessGroup(ProcessGroup):
    """A group whose CuPy-array collectives run in NCCL; see the module docstring.

    Args:
        mpi_group: an MPI group on the same ranks, owned by this group from now on: it
            bootstraps NCCL and carries host arrays, objects, ``barrier`` and the consensus
            check. Build it with ``check_collectives=False`` (as ``init_nccl_world`` does):
            this group checks its collectives itself, so a checking one would check host
            collectives twice.
        device_index: this rank's GPU; default ``local_rank % device count``.
        name: the group's label; default the MPI group's.
        check_collectives: as for ``ProcessGroup``.

    Attributes:
        mpi: the MPI group (see Args).
        device_index: the GPU of this rank's communicator.
    """

    backend = "nccl"

    def __init__(self, mpi_group: MPIProcessGroup, device_index: int | None = None,
                 name: str | None = None, *, check_collectives: bool = True):
        super().__init__(mpi_group.rank(), mpi_group.size(), mpi_group.global_ranks,
                         name or mpi_group.name, check_collectives=check_collectives,
                         local_rank=mpi_group.local_rank)
        cp = cupy_module()
        nccl = nccl_module()
        self.mpi = mpi_group
        if device_index is None:
            local = self.local_rank if self.local_rank is not None else self._rank
            device_index = local % cp.cuda.runtime.getDeviceCount()
        self.device_index = device_index
        self._nccl = nccl
        uid = nccl.get_unique_id() if self._rank == 0 else None
        uid = mpi_group.broadcast_object(uid, 0)  # collective over the MPI group: all ranks
        with cp.cuda.Device(device_index):
            self._comm = nccl.NcclCommunicator(self._size, uid, self._rank)
            self._stream = cp.cuda.Stream(non_blocking=True)

    # ------------------------------------------------------------------ stream choreography
    def _run(self, launch) -> Any:
        """Run ``launch(stream_ptr)`` on the group's stream, ordered after the caller's work.

        Returns the event recorded after it on the group's stream.
        """
        cp = cupy_module()
        with cp.cuda.Device(self.device_index):
            ready = cp.cuda.Event(disable_timing=True)
            ready.record(cp.cuda.get_current_stream())
            self._stream.wait_event(ready)
            launch(self._stream.ptr)
            done = cp.cuda.Event(disable_timing=True)
            done.record(self._stream)
        return done

    @staticmethod
    def _join(done) -> None:
        """Make the caller's current stream wait for ``done`` (no host blocking)."""
        cupy_module().cuda.get_current_stream().wait_event(done)

    def _check_device(self, *arrays) -> None:
        for a in arrays:
            if a.device.id != self.device_index:
                raise RuntimeError(
                    f"backend 'nccl' rank {self._rank}: array on cuda:{a.device.id}, but this "
                    f"rank's communicator is on cuda:{self.device_index}"
                )

    def _divide(self, array) -> None:
        """``array /= size`` on the group's stream (AVG is SUM then a division)."""
        with cupy_module().cuda.Device(self.device_index), self._stream:
            array /= self._size

    def _record(self):
        cp = cupy_module()
        with cp.cuda.Device(self.device_index):
            event = cp.cuda.Event(disable_timing=True)
            event.record(self._stream)
        return event

    # ------------------------------------------------------------------- array collectives
    def _verify(self, description: str, what: str) -> None:
        self.mpi.verify(description)  # checks whatever the MPI group's check_collectives says

    def _allreduce_impl(self, array, op: ReduceOp) -> None:
        if not is_cupy_array(array):
            self.mpi.allreduce(array, op)
            return
        self._join(self._allreduce_start(array, op))

    def _allreduce_async_impl(self, array, op: ReduceOp) -> Work:
        if not is_cupy_array(array):
            return self.mpi.allreduce_async(array, op)
        done = self._allreduce_start(array, op)
        return Work(lambda: self._join(done))

    def _allreduce_start(self, array, op: ReduceOp):
        """Queue the all-reduce of a CuPy array; the event recorded after it."""
        self._check_device(array)
        nccl = self._nccl
        kind, count = _nccl_dtype(nccl, array), array.size
        nop = getattr(nccl, _OPS[op])
        ptr = array.data.ptr
        done = self._run(lambda s: self._comm.allReduce(ptr, ptr, count, kind, nop, s))
        if op is ReduceOp.AVG:
            self._divide(array)
            done = self._record()
        return done

    def _broadcast_impl(self, array, src: int) -> None:
        if not is_cupy_array(array):
            self.mpi.broadcast(array, src)
            return
        self._check_device(array)
        kind, ptr = _nccl_dtype(self._nccl, array), array.data.ptr
        self._join(self._run(lambda s: self._comm.broadcast(ptr, ptr, array.size, kind, src, s)))

    def _allgather_impl(self, out_array, in_array) -> None:
        if not (is_cupy_array(out_array) and is_cupy_array(in_array)):
            self.mpi.allgather(out_array, in_array)
            return
        self._check_device(out_array, in_array)
        kind = _nccl_dtype(self._nccl, in_array)
        sptr, rptr, n = in_array.data.ptr, out_array.data.ptr, in_array.size
        self._join(self._run(lambda s: self._comm.allGather(sptr, rptr, n, kind, s)))

    def _reduce_scatter_impl(self, out_array, in_array, op: ReduceOp) -> None:
        if not (is_cupy_array(out_array) and is_cupy_array(in_array)):
            self.mpi.reduce_scatter(out_array, in_array, op)
            return
        self._check_device(out_array, in_array)
        nccl = self._nccl
        kind, nop = _nccl_dtype(nccl, in_array), getattr(nccl, _OPS[op])
        sptr, rptr, n = in_array.data.ptr, out_array.data.ptr, out_array.size
        self._run(lambda s: self._comm.reduceScatter(sptr, rptr, n, kind, nop, s))
        if op is ReduceOp.AVG:
            self._divide(out_array)
        self._join(self._record())

    def _barrier_impl(self) -> None:
        """Host barrier after this rank's queued GPU work (compute and collectives) finished."""
        cp = cupy_module()
        with cp.cuda.Device(self.device_index):
            cp.cuda.get_current_stream().synchronize()
            self._stream.synchronize()
        self.mpi.barrier()

    def _allgather_object_impl(self, obj: Any) -> list:
        return self.mpi.allgather_object(obj)

    def _broadcast_object_impl(self, obj: Any, src: int) -> Any:
        return self.mpi.broadcast_object(obj, src)

    def _dup_impl(self, check_collectives: bool) -> ProcessGroup:
        # The MPI group's plain dup keeps it unchecked, as this group's host channel must be.
        return NCCLProcessGroup(self.mpi.dup(), self.device_index, self.name + ".dup",
                                check_collectives=check_collectives)

    def _new_subgroup_impl(self, ranks: list[int], check_collectives: bool) -> ProcessGroup | None:
        sub = self.mpi.new_subgroup(ranks)
        if sub is None:
            return None
        return NCCLProcessGroup(sub, self.device_index, check_collectives=check_collectives)

    def _destroy_impl(self) -> None:
        comm, self._comm = getattr(self, "_comm", None), None
        if comm is not None:
            self._stream.synchronize()
            comm.destroy()
        self.mpi.destroy()


def init_nccl_world(timeout=None) -> NCCLProcessGroup:
    """The WORLD group: MPI's WORLD for bootstrap/objects, NCCL on GPU local_rank % count."""
    nccl_module()  # fail before touching MPI when NCCL cannot work here
    mpi_world = init_mpi_world(timeout, check_collectives=False)  # the NCCL group checks
    try:
        pg = NCCLProcessGroup(mpi_world)
    except BaseException:
        mpi_world.destroy()
        raise
    cupy_module().cuda.Device(pg.device_index).use()  # tensors default to this rank's GPU
    return pg

