"""``Join``: training with uneven inputs, torch's ``torch.distributed.algorithms.Join``.

When ranks have different numbers of batches, a rank that runs out would leave the others
waiting in their next collective. Inside ``with Join([model, optimizer]):`` a rank whose loop
has ended *joins*: until every rank has joined, it *shadows* the collectives the others still
issue (each joinable's ``JoinHook.main_hook`` issues one iteration's worth of them, contributing
nothing), then every joinable's ``post_hook`` runs (DDP: the last rank to join broadcasts the
final model, so all replicas end equal).

The per-iteration protocol, on every rank, in this order:

* an active rank: the first joinable calls ``Join.notify_join_context(self)`` at the start of
  its iteration (DDP: in ``forward``): one all-reduce (SUM) of 1 over the joinables' group,
  which returns the number of ranks still active;
* a joined rank: the same all-reduce with 0 in ``__exit__``; while the sum is not 0 it runs
  every ``main_hook`` (shadowing that iteration), then asks again.

With ``throw_on_early_termination=True`` the first iteration that sees a joined rank raises on
every rank instead (no shadowing).

Collectives outside the joinables (a user's own ``all_reduce`` in the loop, ``clip_grad_norm_``
of a ZeRO optimizer) are not shadowed: as in torch, they must not run in iterations some rank
has no data for.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ddp.distributed.reduce_op import ReduceOp

_local = threading.local()  # .join: the Join this thread is inside (threads backend: per rank)

EARLY_TERMINATION = "Detected at least one rank that exhausted inputs. Throwing across all ranks."


class JoinHook:
    """What a joined rank does for one joinable: ``main_hook`` shadows one iteration of the
    joinable's collectives; ``post_hook`` runs once every rank has joined."""

    def main_hook(self) -> None:
        """Issue the collectives one iteration of an active rank issues, contributing nothing."""

    def post_hook(self, is_last_joiner: bool) -> None:
        """Every rank has joined. ``is_last_joiner``: this rank was among the last to join."""


class Joinable(ABC):
    """Something whose per-iteration collectives a joined rank can shadow (DDP, ZeRO)."""

    #: May be the first joinable of a ``Join`` (it calls ``notify_join_context`` where its
    #: iteration starts). ZeRO cannot: its first collective of an iteration is in backward.
    can_lead_join = True

    @abstractmethod
    def join_hook(self, **kwargs: Any) -> JoinHook:
        """The hook a joined rank runs for this joinable."""

    @property
    @abstractmethod
    def join_device(self):
        """Where the join all-reduces happen (ddp: NumPy arrays, any backend moves them)."""

    @property
    @abstractmethod
    def join_process_group(self):
        """The group the join protocol runs on: every joinable of one ``Join`` shares it."""


class Join:
    """Context manager: ranks with fewer inputs shadow the others until every rank is done.

    Must be entered on every rank of the joinables' group, around the training loop.

    Args:
        joinables: e.g. ``[ddp_model]`` or ``[ddp_model, zero_optimizer]``; the first one
            counts the active ranks (``notify_join_context``), the hooks run in this order.
        enable: False turns the context into a no-op (no collectives, no shadowing).
        throw_on_early_termination: raise on every rank as soon as one rank has joined,
            instead of shadowing.
        **kwargs: passed to every ``join_hook`` (DDP: ``divide_by_initial_world_size``).

    Raises:
        ValueError: no joinables, or joinables on different process groups.
    """

    def __init__(self, joinables: list[Joinable], enable: bool = True,
                 throw_on_early_termination: bool = False, **kwargs: Any):
        if len(joinables) == 0:
            raise ValueError("The join context manager requires at least one joinable")
        if not joinables[0].can_lead_join:
            raise ValueError(
                f"Join: {type(joinables[0]).__name__} cannot be the first joinable (it cannot "
                "count the active ranks where an iteration starts); put the model first, e.g. "
                "Join([ddp_model, optimizer])")
        self._joinables = list(joinables)
        self._hooks = [j.join_hook(**kwargs) for j in self._joinables]
        self._enable = enable
        self._throw = throw_on_early_termination
        groups = {id(j.join_process_group) for j in self._joinables}
        if len(groups) != 1:
            raise ValueError("Using join context manager with multiple process groups")
        self._group = self._joinables[0].join_process_group
        self._previous = None

    def __enter__(self) -> Join:
        self._previous = getattr(_local, "join", None)
        if self._enable:
            _local.join = self
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _local.join = self._previous
        if not self._enable or exc_type is not None:
            return  # an exception ends the job through the failure path, not by shadowing
        is_last_joiner = True
        while self._count(active=False) > 0:
            if self._throw:
                raise RuntimeError(EARLY_TERMINATION)
            is_last_joiner = False
            for hook in self._hooks:
                hook.main_hook()
        for hook in self._hooks:
            hook.post_hook(is_last_joiner)

    def _count(self, active: bool) -> int:
        """Collective: how many ranks of the group are still active (this one included)."""
        flag = np.array([1 if active else 0], dtype=np.int64)
        self._group.allreduce(flag, ReduceOp.SUM)
        return int(flag[0])

    @staticmethod
    def notify_join_context(joinable: Joinable) -> int | None:
        """Called by ``joinable`` at the start of each iteration on an active rank.

        Returns the number of active ranks (a collective: the join all-reduce) when
        ``joinable`` is the first joinable of the ``Join`` this thread is inside; None
        otherwise (not inside a Join, or not the first joinable: no collective).

        Raises:
            RuntimeError: with ``throw_on_early_termination``, when some rank has joined.
        """
        join = getattr(_local, "join", None)
        if join is None or join._joinables[0] is not joinable:
            return None
        active = join._count(active=True)
        if join._throw and active < join._group.size():
            raise RuntimeError(EARLY_TERMINATION)
        return active
