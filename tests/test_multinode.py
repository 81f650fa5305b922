"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``: a head without CPUs for tasks and three
one-CPU worker nodes, each with its own custom resource), results and shards on a shared folder. A worker node
is removed in the middle of each stage:

* DFT and rendering spread over the nodes; after the loss every molecule is exactly once in the results or in
  the failure manifest;
* Ray Train pretraining (ImageED tiny, one rank per node) goes on from the last checkpoint under
  ``FailureConfig`` and its loss curve continues where it was.

Slow (a Ray cluster of four nodes on a 2-core machine): ``pytest -m slow tests/test_multinode.py``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

WORKER_NODES = 3


@pytest.fixture
def ray_cluster(monkeypatch):
    """A head (0 CPUs: the driver's node) and three worker nodes of 1 CPU; shut down whatever happens."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    tmp = tempfile.mkdtemp(prefix="edgmn", dir="/tmp")  # Ray's socket paths must stay short
    # Ray's temp root, where Cluster also writes its address file: not the machine-wide /tmp/ray, so that
    # other Ray users of this machine (address="auto") never find this cluster
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a test cluster on loopback: no token read from or written to ~
    from edg.cluster.runtime import loopback_only
    with loopback_only():  # every node listens on 127.0.0.1, as EDG's own local runtime
        c = Cluster(initialize_head=True, connect=False,
                    head_node_args={"num_cpus": 0, "include_dashboard": False, "temp_dir": f"{tmp}/ray"})
        try:
            for i in range(WORKER_NODES):
                c.add_node(num_cpus=1, resources={f"node{i}": 1})
            c.wait_for_nodes()
            ray.init(address=c.address, log_to_driver=False)
            assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
            yield c
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def _actors(class_part: str) -> list[dict]:
    """Every actor (alive or dead) whose class name contains ``class_part``: {state, node}."""
    from ray._private import state
    out = []
    for a in state.actors().values():
        if class_part in a.get("ActorClassName", ""):
            out.append({"state": a["State"], "node": a["Address"]["NodeID"]})
    return out


def _worker_node_of(cluster, class_part: str):
    """A worker node (of ``cluster``) running a live actor of ``class_part``, or None."""
    alive = {a["node"] for a in _actors(class_part) if a["state"] == "ALIVE"}
    return next((n for n in cluster.worker_nodes if n.node_id in alive), None)


def _in_background(fn):
    """Run ``fn`` in a thread; returns (thread, box) where box holds its result or error."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised by the test
            box["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _remove_when(cluster, ready, class_part: str, stage: threading.Thread, box: dict, timeout: float = 1800.0):
    """Once ``ready()`` holds, remove a worker node running an actor of ``class_part``; returns its id.
    Fails when the ``stage`` thread ends first (with its error, if any)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not stage.is_alive():
            raise AssertionError(f"the stage ended before a node running {class_part} could be removed: "
                                 f"{box.get('error', box.get('value'))!r}")
        if ready():
            node = _worker_node_of(cluster, class_part)
            if node is not None:
                cluster.remove_node(node, allow_graceful=False)
                return node.node_id
        time.sleep(0.2)
    raise AssertionError(f"no moment to remove a node running {class_part} within {timeout} s")


def _failed_keys(path: Path) -> list[str]:
    return [json.loads(x)["key"] for x in path.read_text().splitlines()] if path.exists() else []


def test_dft_and_render_spread_over_nodes_and_survive_a_node_loss(ray_cluster, tmp_path):
    cluster = ray_cluster
    from edg.cluster.stages import Workers, run_dft, run_render
    from edg.dft.config import DFTConfig
    from edg.dft.worker import done_keys, result_files
    from edg.edg_core.readers import open_source
    from edg.edg_core.shards import read_samples, sample_key
    from edg.render.config import RenderConfig
    mols = [m for m in open_source("embedded:qm9").molecules() if m.n_atoms <= 8][:12]
    keys = {sample_key(m.id) for m in mols}
    shared = tmp_path / "shared"  # every node's processes see this folder

    # ---- DFT: two one-CPU actors on two nodes; a node goes when three results are in
    dft_out = shared / "dft"
    cfg = DFTConfig(backend="cpu", basis="sto-3g", grid_spacing=1.0)
    t0 = time.time()
    t, box = _in_background(lambda: run_dft(iter(mols), dft_out, cfg, Workers(actors=2, cpus=1), total=len(mols)))
    lost = _remove_when(cluster, lambda: len(done_keys(dft_out)) >= 3, "DFTWorker", t, box)
    assert t.is_alive(), "the DFT stage ended before the node was removed"
    t.join(3600)  # returns when the stage ends; the timeout only stops a hang
    assert not t.is_alive() and "error" not in box, box.get("error")
    dft_s = time.time() - t0
    done, failed = done_keys(dft_out), _failed_keys(dft_out / "failures.jsonl")
    assert len(failed) == len(set(failed)) and not (done & set(failed)) and done | set(failed) == keys
    assert len(result_files(dft_out)) == len(done)  # one file per molecule, none twice, no leftovers
    actors = _actors("DFTWorker")
    used = {a["node"] for a in actors}
    assert len(used) >= 3 and lost in used  # two nodes at first, the spare one after the loss
    assert len(actors) >= 3  # the lost actor was replaced

    # ---- rendering: ED + structure images of the results; another node goes mid-stage
    shard_out = shared / "shards"
    paths = result_files(dft_out)
    rcfg = RenderConfig(image_size=96, batch_size=1)  # long enough that the lost node holds work
    cluster.add_node(num_cpus=1, resources={"node_spare": 1})  # back to three worker nodes
    cluster.wait_for_nodes()
    t0 = time.time()
    t, box = _in_background(lambda: run_render(iter(paths), shard_out, rcfg, Workers(actors=2, cpus=1),
                                               total=len(paths), device="cpu"))

    def rendering():  # both render actors up (each holds its first batches as soon as it is)
        return sum(a["state"] == "ALIVE" for a in _actors("RenderActor")) >= 2
    _remove_when(cluster, rendering, "RenderActor", t, box)
    assert t.is_alive(), "the render stage ended before the node was removed"
    t.join(3600)  # returns when the stage ends; the timeout only stops a hang
    assert not t.is_alive() and "error" not in box, box.get("error")
    render_s = time.time() - t0
    rendered = [s["__key__"] for s in read_samples(shard_out)]
    rfailed = _failed_keys(shard_out / "failures.jsonl")
    assert len(rendered) == len(set(rendered)), "a molecule was rendered twice"
    assert len(rfailed) == len(set(rfailed)) and not (set(rendered) & set(rfailed))
    assert set(rendered) | set(rfailed) == done
    assert len({a["node"] for a in _actors("RenderActor")}) >= 3 and len(_actors("RenderActor")) >= 3
    print(f"multinode: dft {len(done)} done / {len(failed)} failed in {dft_s:.0f} s on "
          f"{len(used)} nodes ({len(actors)} actors); render {len(rendered)} / {len(rfailed)} failed in "
          f"{render_s:.0f} s")


def test_ray_train_resumes_from_the_last_checkpoint_after_a_node_loss(ray_cluster, tmp_path):
    cluster = ray_cluster
    from edg.cluster.train_ray import run_pretraining
    from edg.edg_core.io import read_jsonl
    from edg.train.data.shards import write_synthetic_shards
    from edg.train.loops.pretrain import ImageEDTrainConfig
    from edg.train.models.imageed import imageed_preset
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, size=32, maxcount=16)  # the 40 embedded molecules, in 3 shards
    out = tmp_path / "out"
    epochs = 3
    # 800 samples per epoch (the shard stream restarts): 100 steps of 2 ranks x 4, some seconds per epoch
    cfg = ImageEDTrainConfig(model=imageed_preset("tiny"), epochs=epochs, warmup_epochs=0, batch_size=4,
                             num_workers=0, lr=1e-3, shuffle_buffer=16, val_fraction=0.125,
                             samples_per_epoch=800, checkpoint_every=1)
    t0 = time.time()
    t, box = _in_background(lambda: run_pretraining("imageed", cfg, shards, out, num_workers=2, max_failures=2,
                                                    storage_path=tmp_path / "storage", cpus_per_worker=1))
    seen: dict = {}

    def mid_epoch_1():  # epoch 0 reported (its checkpoint saved), and epoch 1 under way for a moment
        m = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
        if len(m) == 1 and "epoch0_at" not in seen:
            seen["epoch0"] = m[0]
            seen["epoch0_at"] = time.time()
            seen["epoch0_s"] = 800 / m[0]["samples_per_s"]
        return len(m) == 1 and time.time() - seen["epoch0_at"] > 0.25 * seen["epoch0_s"]
    _remove_when(cluster, mid_epoch_1, "RayTrainWorker", t, box)
    removed_at = time.time()
    assert t.is_alive()
    t.join(3600)  # returns when training ends; the timeout only stops a hang
    assert not t.is_alive() and "error" not in box, box.get("error")
    result = box["value"]
    assert result.error is None
    metrics = read_jsonl(out / "metrics.jsonl")
    # one line per epoch, in order; epoch 1's line is the one written before the loss, timings included (the
    # restarted group took its history from epoch 1's checkpoint: a run from scratch would have measured anew)
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert metrics[0] == seen["epoch0"]
    assert [m["step"] for m in metrics] == [100 * (e + 1) for e in range(epochs)]
    losses = [m["train_loss"] for m in metrics]
    # the curve continues: after the restart the loss stays below where training started
    assert losses[1] < losses[0] and min(losses[1:]) < losses[0]
    workers = _actors("RayTrainWorker")
    assert len(workers) >= 4 and len({a["node"] for a in workers}) >= 3  # the group was rebuilt on the spare node
    print(f"multinode train: epoch 0 trained in {seen['epoch0_s']:.1f} s, node removed "
          f"{removed_at - seen['epoch0_at']:.0f} s into epoch 1, finished {time.time() - t0:.0f} s after start; "
          f"train_loss per epoch {[round(x, 4) for x in losses]}")
