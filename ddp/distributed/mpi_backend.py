"""The ``mpi`` backend: mpi4py's upper-case buffer methods on a duplicate of COMM_WORLD.

``Allreduce``/``Bcast``/``Allgather``/``Reduce_scatter_block`` move contiguous memory at C
speed without pickling; only the ``*_object`` collectives (and the error path of the mismatch
check) pickle. CuPy arrays are staged through host memory. mpi4py initialises MPI with
``MPI_THREAD_MULTIPLE``, so a group may be driven from any thread (one at a time per group).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ddp import config, dtypes
from ddp.backend import cupy_module, get_array_module, is_cupy_array, to_numpy
from ddp.distributed import exit_protocol, run_dir, watchdog
from ddp.distributed.cpu_threads import share_cores
from ddp.distributed.failure import install_abort_hooks
from ddp.distributed.peer_channel import PeerChannel, open_channel
from ddp.distributed.process_group import ProcessGroup, fingerprint, mismatch_message
from ddp.distributed.reduce_op import ReduceOp, Work


def _mpi():
    from mpi4py import MPI  # imported lazily: the local backend never touches MPI

    return MPI


def _op(op: ReduceOp):
    MPI = _mpi()
    return {
        ReduceOp.SUM: MPI.SUM,
        ReduceOp.AVG: MPI.SUM,  # then divided by the group size
        ReduceOp.PRODUCT: MPI.PROD,
        ReduceOp.MIN: MPI.MIN,
        ReduceOp.MAX: MPI.MAX,
    }[op]


# MPI has no bfloat16 datatype: bfloat16 buffers travel as their uint16 bits (2 bytes each, as
# on NCCL) and are reduced by user-defined ops that add in float32 and round, pair by pair.
_BF16_OPS: dict = {}


def _bits(array):
    """The buffer MPI moves: bfloat16 as its uint16 bits, everything else as it is."""
    return array.view(np.uint16) if array.dtype == dtypes.BFLOAT16 else array


def _op_for(op: ReduceOp, array):
    """The MPI op reducing ``array``'s elements; for bfloat16 one of ours (made once)."""
    if array.dtype != dtypes.BFLOAT16:
        return _op(op)
    if op not in _BF16_OPS:
        combine = {ReduceOp.SUM: np.add, ReduceOp.AVG: np.add, ReduceOp.PRODUCT: np.multiply,
                   ReduceOp.MIN: np.minimum, ReduceOp.MAX: np.maximum}[op]

        def reduce_bfloat16(inbuf, inoutbuf, datatype):
            a = np.frombuffer(inbuf, dtype=dtypes.BFLOAT16)
            b = np.frombuffer(inoutbuf, dtype=dtypes.BFLOAT16)
            b[...] = combine(a.astype(np.float32), b.astype(np.float32))

        _BF16_OPS[op] = _mpi().Op.Create(reduce_bfloat16, commute=True)
    return _BF16_OPS[op]


# With a CUDA-aware MPI (Open MPI/MVAPICH built with CUDA) set DDP_MPI_CUDA_AWARE=1 to hand
# CuPy arrays to MPI directly (mpi4py reads __cuda_array_interface__) instead of staging them.
CUDA_AWARE: bool = config.get("DDP_MPI_CUDA_AWARE")  # read at import


def _mpi_buffer(array):
    """What MPI reads: the array itself (NumPy, or CuPy with CUDA-aware MPI) or a host copy."""
    if isinstance(array, np.ndarray):
        return array
    if CUDA_AWARE and is_cupy_array(array):
        cupy_module().cuda.get_current_stream().synchronize()  # MPI does not see our streams
        return array
    return to_numpy(array)


class _HostStage:
    """A buffer for MPI to work on; for staged CuPy arrays a copy ``commit()`` writes back."""

    def __init__(self, array):
        self.array = array
        self.host = _mpi_buffer(array)

    def commit(self) -> None:
        if self.host is not self.array:
            self.array[...] = get_array_module(self.array).asarray(self.host)


class _RequestWork(Work):
    """Work of a non-blocking MPI collective; ``is_completed()`` tests the request.

    MPI progresses non-blocking collectives only inside MPI calls, so polling
    ``is_completed()`` while computing is what moves the data along.
    """

    def __init__(self, request, finish):
        super().__init__(finish)
        self._request = request

    def is_completed(self) -> bool:
        return self._done or bool(self._request.Test())


class MPIProcessGroup(ProcessGroup):
    """A group over an MPI communicator owned by this object.

    Args:
        comm: the mpi4py communicator; the group owns it from now on (``destroy()`` frees it).
        global_ranks, name, local_rank, check_collectives: as for ``ProcessGroup``.
    """

    backend = "mpi"

    def __init__(self, comm, global_ranks: list[int], name: str = "WORLD",
                 local_rank: int | None = None, *, check_collectives: bool = True):
        super().__init__(comm.Get_rank(), comm.Get_size(), global_ranks, name,
                         check_collectives=check_collectives, local_rank=local_rank)
        self._comm = comm
        self._header = np.empty(2, dtype=np.int64)

    @property
    def comm(self):
        """The mpi4py communicator this group owns (``COMM_NULL`` once destroyed).

        For interoperating with mpi4py code: what runs on it directly bypasses this group's
        consensus check and watchdog.
        """
        return self._comm

    # The mismatch check: one tiny Allreduce of [h, -h] with MAX gives [max h, -min h]; the
    # ranks agree iff both equal this rank's h. Every rank sees the same verdict.
    def _verify(self, description: str, what: str) -> None:
        h = fingerprint(description)
        header = self._header
        header[0] = h
        header[1] = -h
        self._comm.Allreduce(_mpi().IN_PLACE, header, op=_mpi().MAX)
        if header[0] != h or header[1] != -h:
            descriptions = self._comm.allgather(description)
            raise RuntimeError(mismatch_message(self.name, "mpi", descriptions))

    def _allreduce_impl(self, array, op: ReduceOp) -> None:
        stage = _HostStage(array)
        self._comm.Allreduce(_mpi().IN_PLACE, _bits(stage.host), op=_op_for(op, stage.host))
        if op is ReduceOp.AVG:
            stage.host /= self._size
        stage.commit()

    def _allreduce_async_impl(self, array, op: ReduceOp) -> Work:
        stage = _HostStage(array)
        request = self._comm.Iallreduce(_mpi().IN_PLACE, _bits(stage.host),
                                        op=_op_for(op, stage.host))

        def finish() -> None:
            request.Wait()
            if op is ReduceOp.AVG:
                stage.host /= self._size
            stage.commit()

        return _RequestWork(request, finish)

    def _broadcast_impl(self, array, src: int) -> None:
        stage = _HostStage(array)
        self._comm.Bcast(_bits(stage.host), root=src)
        stage.commit()

    def _allgather_impl(self, out_array, in_array) -> None:
        out = _HostStage(out_array)
        self._comm.Allgather(_bits(_mpi_buffer(in_array)), _bits(out.host))
        out.commit()

    def _reduce_scatter_impl(self, out_array, in_array, op: ReduceOp) -> None:
        out = _HostStage(out_array)
        self._comm.Reduce_scatter_block(_bits(_mpi_buffer(in_array)), _bits(out.host),
                                        op=_op_for(op, out.host))
        if op is ReduceOp.AVG:
            out.host /= self._size
        out.commit()

    def _barrier_impl(self) -> None:
        self._comm.Barrier()

    def _allgather_object_impl(self, obj: Any) -> list:
        return self._comm.allgather(obj)

    def _broadcast_object_impl(self, obj: Any, src: int) -> Any:
        return self._comm.bcast(obj, root=src)

    def _dup_impl(self, check_collectives: bool) -> ProcessGroup:
        return MPIProcessGroup(self._comm.Dup(), self.global_ranks, self.name + ".dup",
                               self.local_rank, check_collectives=check_collectives)

    def _new_subgroup_impl(self, ranks: list[int], check_collectives: bool) -> ProcessGroup | None:
        members = self._comm.Get_group().Incl(ranks)
        comm = self._comm.Create(members)  # collective over self.comm; COMM_NULL off-group
        members.Free()
        if comm == _mpi().COMM_NULL:
            return None
        global_ranks = [self.global_ranks[r] for r in ranks]
        return MPIProcessGroup(comm, global_ranks, f"group{global_ranks}",
                               check_collectives=check_collectives)

    def _destroy_impl(self) -> None:
        MPI = _mpi()
        if self._comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self._comm.Free()
        self._comm = MPI.COMM_NULL


_peers: list[PeerChannel | None] = []  # the job's peer channel, opened by the first init


def init_mpi_world(timeout=None, *, check_collectives: bool = True) -> MPIProcessGroup:
    """The WORLD group over ``COMM_WORLD.Dup()``; sets torchrun's env vars and the abort hooks.

    The first init of a process also opens the job's peer channel (another ``Dup``), starts
    the watchdog thread on it and arms the exit protocol (``ddp.distributed.exit_protocol``):
    from here on, a rank that leaves or a collective that cannot complete ends the job with a
    message naming the rank.

    ``check_collectives`` is the new group's (the ``nccl`` backend builds on an unchecked one,
    since it checks its collectives itself).

    ``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` come from ``Split_type(COMM_TYPE_SHARED)`` (the ranks
    sharing this node's memory); ``RANK`` and ``WORLD_SIZE`` from COMM_WORLD. The node's cores
    are shared among its ranks (``cpu_threads.share_cores``) unless the user set a thread count.
    """
    MPI = _mpi()
    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    config.export_launch_env(world.Get_rank(), world.Get_size(), local_rank, local_size)
    share_cores(local_size)
    rank, size = world.Get_rank(), world.Get_size()
    install_abort_hooks(rank, size)
    if not _peers:
        _peers.append(open_channel(world) if size > 1 else None)
        run_dir.record_pid(rank)
    dog = watchdog.install(rank, size, timeout, peers=_peers[0])
    exit_protocol.arm(rank, _peers[0], dog)
    return MPIProcessGroup(world.Dup(), list(range(world.Get_size())), "WORLD", local_rank,
                           check_collectives=check_collectives)
