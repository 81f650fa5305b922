"""The whole pipeline (cluster/pipeline.py): in-process end to end with a bad record and a poisoned molecule,
on a local Ray head with an actor killed mid-stage, and interrupted then resumed. Small real data: four small
molecules through B3LYP/STO-3G (the paper's 6-31G** is the default; STO-3G keeps the test fast), 32-pixel
images, tiny models, and the embedded rMD17 ethanol frames for the students."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from edg.dft.worker import result_path, result_rel
from edg.edg_core.shards import read_samples, shard_keys

MOLECULES = """3
id=water
O 0.0 0.0 0.1173
H 0.0 0.7572 -0.4692
H 0.0 -0.7572 -0.4692
5
id=methane
C 0.0 0.0 0.0
H 0.629 0.629 0.629
H -0.629 -0.629 0.629
H -0.629 0.629 -0.629
H 0.629 -0.629 -0.629
1
id=unknown-element
Zz 0 0 0
2
id=fused-atoms
H 0.0 0.0 0.0
H 0.0 0.0 0.01
4
id=ammonia
N 0.0 0.0 0.1
H 0.0 0.94 -0.27
H 0.81 -0.47 -0.27
H -0.81 -0.47 -0.27
2
id=hydrogen-fluoride
F 0.0 0.0 0.0
H 0.0 0.0 0.917
"""
GOOD = {"water", "methane", "ammonia", "hydrogen-fluoride"}


def small_config(tmp: Path, **over) -> Path:
    (tmp / "mols.xyz").write_text(MOLECULES)
    cfg = {
        "out": str(tmp / "run"), "input": str(tmp / "mols.xyz"),
        "dft": {"backend": "cpu", "basis": "sto-3g", "basis_sulfur": "sto-3g", "grid_level": 1, "conv_tol": 1e-7},
        "render": {"image_size": 32, "batch_size": 2},
        "imageed": {"epochs": 2, "warmup_epochs": 1, "batch_size": 2, "num_workers": 0,
                    "model": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                              "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}},
        "teacher": {"epochs": 2, "batch_size": 2, "num_workers": 0, "val_fraction": 0.0,
                    "model": {"arch": "resnet10t", "pretrained": False, "img_size": 32, "hidden_dim": 16,
                              "fu_dim": 32}},
        "students": {"dataset": "rmd17:ethanol", "conformations": "rmd17:ethanol?split=train&root=embedded",
                     "task": {"root": "embedded"}, "students": ["schnet"], "lambdas": [0.0, 0.1], "seeds": [7],
                     "student_args": {"hidden_channels": 16, "num_filters": 16, "num_interactions": 1,
                                      "cutoff": 4.0},
                     "fit": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8}},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ed_samples(run: Path) -> list[dict]:
    return list(read_samples(run / "shards" / "ed", torch_tensors=False))


def test_pipeline_end_to_end_in_process(tmp_path):
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    cfg = load_pipeline_config(small_config(tmp_path))
    run = Path(cfg.out)
    manifest = Pipeline(cfg).run()
    assert list(manifest["stages"]) == ["dft", "render", "imageed", "features", "teacher", "student_images",
                                        "teacher_targets", "distill"]
    # two bad records end in the failure manifest, both refused by the reader (an unknown element; atoms 0.01 Å
    # apart, which the reader refuses as coincident before any DFT); the run goes on
    fails = [json.loads(x) for x in (run / "dft" / "failures.jsonl").read_text().splitlines()]
    assert {f["record"]: f["stage"] for f in fails} == {"unknown-element": "read", "fused-atoms": "read"}
    assert manifest["stages"]["dft"]["done"] == 4 and manifest["stages"]["dft"]["failed"] == 2
    samples = _ed_samples(run)
    assert {s["meta"]["id"] for s in samples} == GOOD
    for s in samples:
        assert s["edimg"].shape == (6, 4, 32, 32) and s["stimg"].shape == (4, 3, 32, 32)
        assert s["labels"]["E6"] < 0 and abs(s["labels"]["E1"] - s["labels"]["E6"]) < 1e-6
    from PIL import Image
    assert Image.open(run / "contact_sheet.png").size[1] == 112 * 12  # 4 molecules x (ED, depth, structure)
    water = next(s for s in samples if s["meta"]["id"] == "water")
    assert -76.0 < water["labels"]["E6"] < -75.0  # B3LYP/STO-3G water, Hartree
    fu = list(read_samples(run / "shards" / "ed_fu", torch_tensors=False))
    assert all(s["fu"].shape == (32,) for s in fu) and len(fu) == 4
    t = np.load(run / "teacher_targets.npz")
    assert len(t["ids"]) == 16 and t["edp"].shape == (16, 32) and t["fs"].shape[0] == 16
    assert str(t["ids"][0]).startswith("rmd17:ethanol:")
    table = (run / "distill" / "results.md").read_text()
    assert "schnet w/o EDG" in table and "ethanol" in table
    assert json.loads((run / "manifest.json").read_text())["failures"]
    # a rerun finds every stage finished and redoes nothing: no output is written again (what shows it, however
    # slow the machine; the run's own bookkeeping, manifest, progress and lease, is rewritten)
    before = _outputs(run)
    assert len([p for p in before if p.endswith(".npz")]) >= 5 and "teacher_targets.npz" in before
    assert all(any(p.endswith(end) for p in before) for end in (".tar", "imageed.pt", "teacher.pt", "result.json"))
    again = Pipeline(load_pipeline_config(small_config(tmp_path))).run()
    assert _outputs(run) == before, sorted(set(_outputs(run).items()) ^ set(before.items()))
    assert again["stages"]["distill"]["test"] == manifest["stages"]["distill"]["test"]


def _outputs(run: Path) -> dict[str, int]:
    """Modification times (ns) of a run's outputs: DFT results, shards, models, targets, figures, results."""
    kinds = (".npz", ".tar", ".keys", ".pt", ".png", ".md")
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")
            if p.is_file() and (p.suffix in kinds or p.name == "result.json")}


@pytest.fixture
def short_tmp():
    d = tempfile.mkdtemp(prefix="edgp")  # Ray's socket paths must stay under 108 characters
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _kill_one_dft_actor_when_work_starts(run: Path, killed: list, finished: threading.Event) -> None:
    """As soon as a DFT actor process is up (its molecules already queued to it), SIGKILL it, as the
    out-of-memory killer would. Actor processes carry the title ``ray::DFTWorker...``. Watches until one is
    killed or the pipeline has ``finished`` (an event: no deadline that a slow machine could miss)."""
    import psutil
    me = psutil.Process()
    while not killed and not finished.is_set():
        for p in me.children(recursive=True):
            try:
                title = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if title.startswith("ray::DFTWorker"):
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
                return
        time.sleep(0.05)


@pytest.mark.ray
def test_pipeline_on_local_ray_head_survives_a_killed_actor(tmp_path, short_tmp):
    ray = pytest.importorskip("ray")
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    from edg.cluster.runtime import ray_session
    path = small_config(tmp_path, ray={"enabled": True, "address": "local", "dft": {"actors": 2},
                                       "render": {"actors": 1}, "train_workers": 1})
    cfg = load_pipeline_config(path, {"stop_after": "teacher_targets"})
    run = Path(cfg.out)
    killed: list = []
    finished = threading.Event()
    with ray_session("local", temp_dir=short_tmp, num_cpus=2):
        killer = threading.Thread(target=_kill_one_dft_actor_when_work_starts, args=(run, killed, finished),
                                  daemon=True)
        killer.start()
        try:
            manifest = Pipeline(cfg).run()
        finally:
            finished.set()
        killer.join(timeout=600)  # it ends within one 0.05 s poll of the event
    assert not ray.is_initialized()
    assert killed, "no DFT actor was alive to kill"
    # every molecule accounted for: the killed actor's molecules were retried on its replacement
    assert {s["meta"]["id"] for s in _ed_samples(run)} == GOOD
    fails = {json.loads(x)["record"] for x in (run / "dft" / "failures.jsonl").read_text().splitlines()}
    assert fails == {"unknown-element", "fused-atoms"}
    assert manifest["stages"]["imageed"]["epoch"] == 2  # Ray Train ran both epochs (epochs count from 1)
    assert (run / "teacher_targets.npz").exists()


@pytest.mark.parametrize("where", ["folder", "url"])
def test_interrupted_pipeline_resumes_without_duplicates(tmp_path, where):
    """SIGKILL mid-DFT, then the same command again; ``url``: out is local:///... (uploads through fsspec, a
    local working copy that the second run rebuilds from the URL)."""
    path = small_config(tmp_path)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "edg.cluster.cli", "pipeline", "--config", str(path), "--stop-after", "render"]
    if where == "url":
        run = tmp_path / "bucket" / "run"
        cmd += ["--out", f"local://{run}", "--work-dir", str(tmp_path / "wc")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the event: two DFT results written (or the run ended); the deadline only guards against a hang
        deadline = time.monotonic() + 1800
        while proc.poll() is None and len(list((run / "dft" / "fields").rglob("*.npz"))) < 2:
            assert time.monotonic() < deadline, "no DFT result within 30 min"
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
    finally:
        proc.send_signal(signal.SIGKILL)  # abrupt: no clean-up code runs
        proc.wait()
    finished_before = {p.stem for p in (run / "dft" / "fields").rglob("*.npz")}
    assert 2 <= len(finished_before) < 4 and not (run / "stages" / "dft.json").exists()
    mtimes = {p.stem: p.stat().st_mtime_ns for p in (run / "dft" / "fields").rglob("*.npz")}
    if where == "url":
        shutil.rmtree(tmp_path / "wc")  # resume from the URL alone
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    # finished molecules were not recomputed, the rest were, and the shards hold each molecule once
    assert all(result_path(run / "dft", k).stat().st_mtime_ns == mtimes[k] for k in finished_before)
    ids = [s["meta"]["id"] for s in _ed_samples(run)]
    assert sorted(ids) == sorted(GOOD) and len(ids) == len(set(ids))
    assert shard_keys(run / "shards" / "ed") == GOOD
    assert not list((run / "shards" / "ed").glob("*.tmp"))


def test_pipeline_config_errors_name_the_problem(tmp_path):
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    from edg.edg_core.config import ConfigError
    path = small_config(tmp_path)
    with pytest.raises(ConfigError, match="stop_after 'rendering' is not a stage"):
        load_pipeline_config(path, {"stop_after": "rendering"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_pipeline_config(path, {"dft": {"basiss": "sto-3g"}})
    with pytest.raises(ConfigError, match="--force teachr: not a stage"):
        Pipeline(load_pipeline_config(path), force=("teachr",))
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"fu_dim \(48\) must equal imageed.model.embed_dim \(32\)"):
        load_pipeline_config(path, {"teacher": {"model": {"arch": "resnet10t", "img_size": 32, "fu_dim": 48}}})


def _remote_tree(url: str) -> dict[str, int]:
    """{relative path: size} of every file under an fsspec URL."""
    import fsspec
    fs, root = fsspec.core.url_to_fs(url)
    return {p[len(root.rstrip("/")) + 1:]: info["size"] for p, info in fs.find(root, detail=True).items()}


def _check_remote_run(url: str) -> None:
    tree = _remote_tree(url)
    assert {f"stages/{s}.json" for s in ("dft", "render", "imageed", "features", "teacher", "student_images",
                                         "teacher_targets", "distill")} <= set(tree)
    assert {f"dft/{result_rel(k)}" for k in ("water", "methane", "ammonia", "hydrogen-fluoride")} <= set(tree)
    for f in ("manifest.json", "config.yaml", "contact_sheet.png", "imageed/imageed.pt", "teacher/teacher.pt",
              "teacher_targets.npz", "distill/results.md", "dft/failures.jsonl"):
        assert tree.get(f, 0) > 0, f"{f} missing from {url}"
    assert any(k.startswith("shards/ed/") and k.endswith(".tar") for k in tree)
    assert any(k.startswith("shards/ed_fu/") and k.endswith(".tar") for k in tree)
    shards = {k for k in tree if k.startswith("shards/") and k.endswith(".tar")}
    assert {k for k in tree if k.endswith(".keys")} == {f"{k}.keys" for k in shards}  # each with its key index
    assert not any(k.endswith(".tmp") for k in tree)
    from edg.edg_core.storage import read_bytes
    fails = [json.loads(x) for x in read_bytes(f"{url}/dft/failures.jsonl").decode().splitlines()]
    assert {f["record"]: f["stage"] for f in fails} == {"unknown-element": "read", "fused-atoms": "read"}
    assert {s["meta"]["id"] for s in read_samples(f"{url}/shards/ed", torch_tensors=False)} == GOOD


def test_pipeline_on_an_fsspec_url_resumes_from_another_working_copy(tmp_path, monkeypatch):
    """out = memory://...: every artefact reaches the URL (nothing is written to a local folder named after
    it), and a second run with an empty working copy resumes from the URL alone: it finds every stage done."""
    import uuid

    import fsspec
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    monkeypatch.chdir(tmp_path)  # a URL mistaken for a path would create ./memory:/...
    monkeypatch.setenv("EDG_ALLOW_MEMORY_OUT", "1")  # memory:// vanishes with the process: tests only
    url = f"memory:///edg-run-{uuid.uuid4().hex[:8]}"
    try:
        cfg = load_pipeline_config(small_config(tmp_path), {"out": url, "work_dir": str(tmp_path / "wc1")})
        manifest = Pipeline(cfg).run()
        _check_remote_run(url)
        assert not (tmp_path / "memory:").exists()
        assert not (tmp_path / "wc1" / "dft" / "fields").exists()  # bulky results live only at the URL
        again = Pipeline(load_pipeline_config(small_config(tmp_path),
                                              {"out": url, "work_dir": str(tmp_path / "wc2")})).run()
        assert all(s.get("seconds") == manifest["stages"][k]["seconds"] for k, s in again["stages"].items())
        assert again["stages"]["distill"]["test"] == manifest["stages"]["distill"]["test"]
        assert (tmp_path / "wc2" / "teacher" / "teacher.pt").exists()  # pulled
        # shards and their key indexes are read in place, never pulled into a working copy
        assert not [p for p in (tmp_path / "wc2").rglob("*") if p.name.endswith((".tar", ".tar.keys"))]
    finally:
        fs, root = fsspec.core.url_to_fs(url)
        if fs.exists(root):
            fs.rm(root, recursive=True)


@pytest.mark.ray
def test_pipeline_on_ray_with_a_url_out_uploads_from_every_worker(tmp_path, short_tmp):
    """The same on a local Ray head with out = local:///... (a URL the actors, Ray Train ranks and distillation
    tasks reach from their own processes): DFT actors upload result files, the driver writes the failure
    manifest, Ray Train ranks push their working copies, distillation tasks upload their run folders."""
    pytest.importorskip("ray")
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    from edg.cluster.runtime import ray_session
    remote_root = tmp_path / "bucket"
    url = f"local://{remote_root}/run"
    path = small_config(tmp_path, ray={"enabled": True, "address": "local", "dft": {"actors": 2},
                                       "render": {"actors": 1}, "train_workers": 1})
    cfg = load_pipeline_config(path, {"out": url, "work_dir": str(tmp_path / "wc")})
    with ray_session("local", temp_dir=short_tmp, num_cpus=2):
        manifest = Pipeline(cfg).run()
    _check_remote_run(url)
    assert manifest["stages"]["imageed"]["epoch"] == 2
    assert len(list((remote_root / "run" / "distill").glob("*/result.json"))) == 2
    assert not (tmp_path / "wc" / "dft" / "fields").exists()
