"""The generic Ray actor pool: streaming with back-pressure, failures, resume keys, a killed actor replaced,
and `edg dft` on Ray actors. Starts one local Ray head (2 CPUs) in a temp dir and shuts it down."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


class Squarer:
    """A test actor: squares numbers, fails on request, and dies once on the item 'crash'."""

    def __init__(self, marker_dir: str):
        self.marker = Path(marker_dir) / "crashed-once"
        self.pid = os.getpid()

    def process(self, item):
        if item == "crash" and not self.marker.exists():
            self.marker.write_text(str(self.pid))
            os._exit(1)  # the actor process dies as if killed
        if item == "crash":
            return {"status": "done", "value": -1, "pid": self.pid}
        if item == "raise":
            raise ValueError("cannot square this")
        if item == "soft":
            return {"status": "failed", "reason": "declined"}
        return {"status": "done", "value": item * item, "pid": self.pid}


@pytest.fixture(scope="module")
def ray_head():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    from edg.cluster.runtime import ray_session
    tmp = tempfile.mkdtemp(prefix="edgray")  # short: Ray's socket paths must stay under 108 characters
    try:
        with ray_session("local", temp_dir=tmp, num_cpus=2):
            assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")  # a local runtime: loopback
            yield ray
        assert not ray.is_initialized()  # the runtime it started is shut down
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_pool_streams_items_replaces_a_dead_actor_and_reports_failures(ray_head, tmp_path):
    from edg.cluster.pool import ActorPool
    items = [(f"n{i}", i) for i in range(8)] + [("crash", "crash"), ("raise", "raise"), ("soft", "soft")]
    consumed = []

    def source():
        for key, item in items:
            consumed.append(key)
            yield key, item

    pool = ActorPool(Squarer, {"marker_dir": str(tmp_path)}, size=2, cpus=1, in_flight=2)
    results, errors = {}, {}
    for key, value, error in pool.map(source()):
        assert key not in results and key not in errors  # every item comes back exactly once
        (errors if error else results)[key] = error or value
    assert (tmp_path / "crashed-once").exists()
    assert pool.stats.actors_replaced == 1 and 1 <= pool.stats.retried <= 2  # the dead actor's items retried
    assert {k: v["value"] for k, v in results.items() if v.get("status") == "done"} == \
        {**{f"n{i}": i * i for i in range(8)}, "crash": -1}
    assert results["soft"]["reason"] == "declined"  # a value is passed through, never interpreted
    assert set(errors) == {"raise"} and "cannot square this" in errors["raise"]
    assert consumed == [k for k, _ in items]


def test_pool_gives_up_on_an_item_that_keeps_killing_actors(ray_head, tmp_path):
    from edg.cluster.pool import ActorPool

    class AlwaysCrash(Squarer):
        def process(self, item):
            os._exit(1)

    pool = ActorPool(AlwaysCrash, {"marker_dir": str(tmp_path)}, size=1, max_retries=0)
    out = list(pool.map([("x", 1)]))
    assert out == [("x", None, "worker died 1 times while processing it")]
    assert pool.stats.actors_replaced == 1 and pool.stats.retried == 0


def test_an_actor_no_node_can_host_is_given_up_and_its_items_go_to_the_others(ray_head, tmp_path):
    """After a node loss the replacement may find no node with room: the pool goes on with the actors it has
    (instead of waiting for ever), and stops with a clear error when none can be placed."""
    import time

    from edg.cluster.pool import ActorPool, NoActorPlaced, _Slot
    pool = ActorPool(Squarer, {"marker_dir": str(tmp_path)}, size=2, cpus=1, placement_timeout_s=2.0)
    # wait for the placeable actor to be placed (an event, not the 2 s timeout: a loaded machine takes longer
    # to start a worker process), so that only the stuck one can miss the timeout
    ray_head.get(pool.slots[0].ready, timeout=600)
    stuck = ray_head.remote(num_cpus=64)(Squarer).remote(str(tmp_path))  # asks for more than any node has
    pool.slots[1] = _Slot(stuck, 1, ready=stuck.__ray_ready__.remote(), since=time.monotonic())
    out = list(pool.map((f"n{i}", i) for i in range(6)))
    assert sorted(k for k, _, _ in out) == [f"n{i}" for i in range(6)]  # each exactly once
    assert all(e is None and v["value"] == int(k[1:]) ** 2 for k, v, e in out)
    assert pool.stats.actors_retired == 1
    with pytest.raises(NoActorPlaced, match="could be placed"):
        list(ActorPool(Squarer, {"marker_dir": str(tmp_path)}, size=1, cpus=64, placement_timeout_s=1.0)
             .map([("x", 1)]))


def test_render_stage_on_ray_actors_writes_to_a_url(ray_head, tmp_path, capsys):
    """`edg render --actors 2 --out local:///...`: the stage driver on actors, shards at an fsspec URL."""
    from edg.cluster.cli import main
    from edg.edg_core.shards import read_samples
    url = f"local://{tmp_path}/shards"
    argv = ["render", "--input", "embedded:qm9?limit=4", "--out", url, "--actors", "2", "--image-size", "16",
            "--batch-size", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 Ray actors" in text and "render: done 4, skipped 0, failed 0" in text
    samples = list(read_samples(url))
    assert len(samples) == 4 and all(s["stimg"].shape == (4, 3, 16, 16) for s in samples)
    assert main(argv) == 0 and "render: done 0, skipped 4" in capsys.readouterr().out


@pytest.mark.slow  # Ray workers import PySCF: about 30 s on 2 idle cores
def test_edg_dft_on_ray_actors(ray_head, tmp_path, capsys):
    from edg.cluster.cli import main
    from edg.dft.worker import load_result, result_path
    out = tmp_path / "run"
    argv = ["dft", "--input", "embedded:qm9?limit=3", "--out", str(out), "--actors", "2", "--ray-address",
            "local", "--basis", "sto-3g", "--grid-level", "1", "--no-fields"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 Ray actors" in text and "dft: done 3, skipped 0, failed 0" in text
    r = load_result(result_path(out, "qm9:2"))
    assert r.converged and r.id == "qm9:2"
    assert ray_head.is_initialized()  # the CLI leaves a runtime it did not start alone
