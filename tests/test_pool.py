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
    from cluster.pool import init_ray
    tmp = tempfile.mkdtemp(prefix="edgray")  # short: Ray's socket paths must stay under 108 characters
    init_ray("local", num_cpus=2, temp_dir=tmp)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def test_pool_streams_items_replaces_a_dead_actor_and_reports_failures(ray_head, tmp_path):
    from cluster.pool import run_actor_pool
    items = [(f"n{i}", i) for i in range(8)] + [("crash", "crash"), ("raise", "raise"), ("soft", "soft")]
    consumed = []

    def source():
        for key, item in items:
            consumed.append(key)
            yield key, item

    results, failures = {}, {}
    s = run_actor_pool(Squarer, source(), ctor_args=(str(tmp_path),), done_keys={"n0", "n1"}, num_actors=2,
                       num_cpus=1, in_flight_per_actor=2, on_result=lambda k, v: results.__setitem__(k, v),
                       on_failure=lambda k, r: failures.__setitem__(k, r))
    assert (tmp_path / "crashed-once").exists()
    assert s.actors_replaced == 1 and 1 <= s.retried <= 2  # the items the dead actor held are retried
    assert s.skipped == 2 and s.done == 7 and s.failed == 2
    assert {k: v["value"] for k, v in results.items() if v.get("status") == "done"} == \
        {**{f"n{i}": i * i for i in range(2, 8)}, "crash": -1}
    assert results["soft"]["reason"] == "declined"
    assert set(failures) == {"raise"} and "cannot square this" in failures["raise"]
    assert consumed == [k for k, _ in items]


def test_pool_gives_up_on_an_item_that_keeps_killing_actors(ray_head, tmp_path):
    from cluster.pool import run_actor_pool

    class AlwaysCrash(Squarer):
        def process(self, item):
            os._exit(1)

    failures = {}
    s = run_actor_pool(AlwaysCrash, [("x", 1)], ctor_args=(str(tmp_path),), num_actors=1, max_retries=0,
                       on_failure=lambda k, r: failures.__setitem__(k, r))
    assert s.failed == 1 and s.done == 0 and s.actors_replaced == 1 and s.retried == 0
    assert "died 1 times" in failures["x"]


@pytest.mark.slow  # Ray workers import PySCF: about 30 s on 2 idle cores
def test_edg_dft_on_ray_actors(ray_head, tmp_path, capsys):
    from cluster.cli import main
    from dft.worker import load_result, result_path
    out = tmp_path / "run"
    argv = ["dft", "--input", "embedded:qm9?limit=3", "--out", str(out), "--workers", "2", "--ray-address",
            "local", "--basis", "sto-3g", "--grid-level", "1", "--no-fields"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 actors" in text and "done 3, skipped 0, failed 0" in text
    r = load_result(result_path(out, "qm9:2"))
    assert r.converged and r.id == "qm9:2"
    assert ray_head.is_initialized()  # the CLI leaves a runtime it did not start alone
