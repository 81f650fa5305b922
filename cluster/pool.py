"""A generic streaming pool of Ray actors (used by the DFT stage, and by rendering later).

The caller gives an actor class, its constructor arguments, an iterable of ``(key, item)`` pairs and the
set of keys already done. Actors are created with ``num_cpus`` / fractional ``num_gpus``; each holds at most
``in_flight_per_actor`` items (back-pressure: the iterable is consumed only as fast as actors finish, so a
two-million-molecule source is never materialised). The actor's ``method`` processes one item and either
writes its own outputs (and returns a small status) or returns the result for ``on_result``.

An actor that dies (killed, crashed, out of memory) is replaced by a fresh one and the items it held are
retried, each at most ``max_retries`` times; beyond that the item is reported through ``on_failure``.
An exception raised by the method itself is deterministic, so it is reported at once, not retried.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edg_core.io import progress

log = logging.getLogger(__name__)


@dataclass
class PoolSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    actors_replaced: int = 0
    wall_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason), first 100


def init_ray(address: str | None = "auto", num_cpus: int | None = None, temp_dir: str | None = None) -> str:
    """Connect to a running Ray cluster (``address``, default ``auto``) or, when none is reachable or
    ``address`` is ``local``, start a local runtime with its files under ``temp_dir`` (a fresh temp dir
    by default). Returns a description of what it did. Does nothing when Ray is already initialised."""
    import ray
    if ray.is_initialized():
        return "ray already initialised"
    if address not in (None, "local"):
        try:
            ray.init(address=address, log_to_driver=False)
            return f"connected to Ray cluster at {address}"
        except (ConnectionError, RuntimeError, ValueError) as e:
            log.info("no Ray cluster at %s (%s); starting a local runtime", address, e)
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="edgray")
    ray.init(num_cpus=num_cpus, _temp_dir=temp_dir, include_dashboard=False, log_to_driver=False)
    return f"local Ray runtime ({temp_dir})"


def _status_of(result: Any) -> tuple[bool, str]:
    """(ok, reason) from a method's return value: a dict with ``status: failed`` counts as a failure."""
    if isinstance(result, dict) and result.get("status") == "failed":
        return False, str(result.get("reason", "failed"))
    return True, ""


def run_actor_pool(actor_cls: type, items: Iterable[tuple[str, Any]], *, ctor_args: tuple = (),
                   ctor_kwargs: dict | None = None, done_keys: set[str] | frozenset = frozenset(),
                   num_actors: int = 2, num_cpus: float = 1, num_gpus: float = 0, method: str = "process",
                   in_flight_per_actor: int = 2, max_retries: int = 2,
                   on_result: Callable[[str, Any], None] | None = None,
                   on_failure: Callable[[str, str], None] | None = None,
                   total: int | None = None, desc: str = "pool") -> PoolSummary:
    """Stream ``items`` through ``num_actors`` Ray actors of ``actor_cls``; see the module docstring.

    Ray must be initialised (``init_ray``). ``on_result(key, value)`` runs in the driver for every finished
    item; ``on_failure(key, reason)`` for items that failed (method error, status ``failed``, or an actor that
    kept dying). Returns a ``PoolSummary``.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    if num_actors < 1:
        raise ValueError("run_actor_pool needs num_actors >= 1")
    remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(actor_cls)
    ctor_kwargs = ctor_kwargs or {}
    summary = PoolSummary()
    actors = [remote_cls.remote(*ctor_args, **ctor_kwargs) for _ in range(num_actors)]
    generation = [0] * num_actors
    load = [0] * num_actors
    in_flight: dict[Any, tuple[int, int, str, Any, int]] = {}  # ref -> (slot, generation, key, item, tries)
    retry: deque[tuple[str, Any, int]] = deque()
    source = iter(items)
    exhausted = False

    def next_item() -> tuple[str, Any, int] | None:
        nonlocal exhausted
        if retry:
            return retry.popleft()
        while not exhausted:
            try:
                key, item = next(source)
            except StopIteration:
                exhausted = True
                return None
            if key in done_keys:
                summary.skipped += 1
                continue
            return key, item, 0
        return None

    def fill() -> None:
        for slot in range(num_actors):
            while load[slot] < in_flight_per_actor:
                nxt = next_item()
                if nxt is None:
                    return
                key, item, tries = nxt
                ref = getattr(actors[slot], method).remote(item)
                in_flight[ref] = (slot, generation[slot], key, item, tries)
                load[slot] += 1

    def fail(key: str, reason: str) -> None:
        summary.failed += 1
        if len(summary.failures) < 100:
            summary.failures.append((key, reason))
        if on_failure is not None:
            on_failure(key, reason)

    def completions() -> Iterator[None]:
        fill()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=60.0)
            for ref in ready:
                slot, gen, key, item, tries = in_flight.pop(ref)
                if gen == generation[slot]:
                    load[slot] -= 1
                try:
                    value = ray.get(ref)
                except RayActorError as e:
                    if gen == generation[slot]:  # first news of this actor's death: replace it
                        log.warning("actor %d died (%s); replacing it", slot, type(e).__name__)
                        ray.kill(actors[slot], no_restart=True)
                        actors[slot] = remote_cls.remote(*ctor_args, **ctor_kwargs)
                        generation[slot] += 1
                        load[slot] = 0
                        summary.actors_replaced += 1
                    if tries < max_retries:
                        summary.retried += 1
                        retry.append((key, item, tries + 1))
                    else:
                        fail(key, f"worker died {tries + 1} times while processing it")
                        yield
                    continue
                except RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    fail(key, f"error: {cause if cause is not None else e}".splitlines()[0])
                    yield
                    continue
                ok, reason = _status_of(value)
                if ok:
                    summary.done += 1
                else:
                    summary.failed += 1
                    if len(summary.failures) < 100:
                        summary.failures.append((key, reason))
                if on_result is not None:
                    on_result(key, value)
                yield
            fill()

    t0 = time.monotonic()
    try:
        for _ in progress(completions(), desc, total=total):
            pass
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
    summary.wall_s = time.monotonic() - t0
    return summary
