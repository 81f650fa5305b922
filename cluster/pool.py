"""A streaming pool of Ray actors: ``(key, item)`` pairs in, ``(key, value, error)`` triples out.

Actors are created with ``cpus`` CPUs and a (possibly fractional) ``gpus`` share each; every actor holds at most
``in_flight`` items, so the source iterable is consumed only as fast as actors finish (back-pressure: a
two-million-molecule source is never materialised). ``process(item)`` runs on an actor; what it returns comes
back as ``value``. An exception raised by ``process`` is deterministic: it comes back at once as ``error``. An
actor that dies (killed, crashed, node lost, out of memory) is replaced and the items it held are retried, each
at most ``max_retries`` times; after that the item comes back with an error saying so. A replacement that no
node can host (a node was lost and no spare has the resources) is given up after ``placement_timeout_s``: its
items go to the surviving actors, and only when none is left does the pool stop with an error.

The pool knows nothing about stages, keys on disk or failure manifests: ``cluster.engine.run_stage`` does.
Ray must be initialised (``cluster.runtime.ray_session``).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from edg.edg_core.errors import DiskFullError, EDGError

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    retried: int = 0
    actors_replaced: int = 0
    actors_retired: int = 0


@dataclass
class _Slot:
    actor: Any
    generation: int = 0
    load: int = 0
    ready: Any = None          # a replacement's __ray_ready__ ref until it has been placed
    since: float = 0.0         # when the replacement was asked for
    retired: bool = False      # never placed: no more work goes here


class NoActorPlaced(EDGError, RuntimeError):
    """No actor of the pool could be placed on the cluster (every replacement stayed pending)."""


class ActorPool:
    """``ActorPool(cls, kwargs, size, cpus, gpus).map(items)``; see the module docstring."""

    def __init__(self, actor_cls: type, kwargs: dict | None = None, *, size: int = 2, cpus: float = 1.0,
                 gpus: float = 0.0, in_flight: int = 2, max_retries: int = 2, method: str = "process",
                 placement_timeout_s: float = 300.0):
        import ray
        if size < 1:
            raise ValueError("ActorPool needs size >= 1")
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus)(actor_cls)
        self.kwargs, self.in_flight, self.max_retries, self.method = kwargs or {}, in_flight, max_retries, method
        self.placement_timeout_s = placement_timeout_s
        self._exhausted = False
        self.slots = [self._placed_later(self._new_actor()) for _ in range(size)]
        self.stats = PoolStats()
        self._pending: dict[Any, tuple[int, int, str, Any, int]] = {}  # ref -> (slot, generation, key, item, tries)
        self._retry: deque[tuple[str, Any, int]] = deque()

    def _new_actor(self):
        return self._remote.remote(**self.kwargs)

    def _submit(self, source: Iterator[tuple[str, Any]]) -> None:
        for i, slot in enumerate(self.slots):
            while slot.load < self.in_flight and not slot.retired:
                if self._retry:
                    key, item, tries = self._retry.popleft()
                else:
                    nxt = next(source, None)
                    if nxt is None:
                        self._exhausted = True
                        return
                    (key, item), tries = nxt, 0
                ref = getattr(slot.actor, self.method).remote(item)
                self._pending[ref] = (i, slot.generation, key, item, tries)
                slot.load += 1

    def _replace(self, i: int, why: str) -> None:
        import ray
        log.warning("actor %d died (%s); replacing it", i, why)
        ray.kill(self.slots[i].actor, no_restart=True)
        self.slots[i] = self._placed_later(self._new_actor(), self.slots[i].generation + 1)
        self.stats.actors_replaced += 1

    @staticmethod
    def _placed_later(actor, generation: int = 0) -> _Slot:
        """A slot for an actor whose placement is watched (``_retire_unplaced``)."""
        return _Slot(actor, generation, ready=actor.__ray_ready__.remote(), since=time.monotonic())

    def _retire_unplaced(self) -> None:
        """Give up replacements still unplaced after ``placement_timeout_s``; their items go back in the queue."""
        import ray
        for i, slot in enumerate(self.slots):
            if slot.ready is None or slot.retired:
                continue
            if ray.wait([slot.ready], timeout=0)[0]:
                slot.ready = None
                continue
            if time.monotonic() - slot.since < self.placement_timeout_s:
                continue
            log.warning("actor %d could not be placed in %.0f s (no node has the resources it asks for); "
                        "going on with the other actors", i, self.placement_timeout_s)
            ray.kill(slot.actor, no_restart=True)
            slot.retired, slot.load = True, 0
            self.stats.actors_retired += 1
            for ref, (j, gen, key, item, tries) in list(self._pending.items()):
                if j == i and gen == slot.generation:
                    del self._pending[ref]
                    self._retry.append((key, item, tries))

    def map(self, items: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any, str | None]]:
        """Yield ``(key, value, None)`` per finished item and ``(key, None, reason)`` per item given up on,
        in completion order. The actors are killed when the iteration ends (or is abandoned)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError
        source = iter(items)
        wait_s = min(60.0, max(0.5, self.placement_timeout_s / 4))
        try:
            while True:
                self._submit(source)
                if not self._pending:
                    if self._retry or not self._exhausted:  # work left and no actor to take it
                        raise NoActorPlaced(f"none of the {len(self.slots)} Ray actors could be placed on the "
                                            "cluster; add nodes with the resources the stage asks for and rerun")
                    break
                ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=wait_s)
                for ref in ready:
                    i, gen, key, item, tries = self._pending.pop(ref)
                    current = gen == self.slots[i].generation
                    if current:
                        self.slots[i].load -= 1
                    try:
                        yield key, ray.get(ref), None
                    except RayActorError as e:
                        if current:  # first news of this actor's death
                            self._replace(i, type(e).__name__)
                        if tries < self.max_retries:
                            self.stats.retried += 1
                            self._retry.append((key, item, tries + 1))
                        else:
                            yield key, None, f"worker died {tries + 1} times while processing it"
                    except RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, DiskFullError):  # not the item's fault: stop, a rerun resumes
                            raise cause from None
                        yield key, None, f"error: {cause if cause is not None else e}".splitlines()[0]
                self._retire_unplaced()
        finally:
            for slot in self.slots:
                ray.kill(slot.actor, no_restart=True)
