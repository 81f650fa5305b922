"""Where stages run: Ray inside a Ray job or with $RAY_ADDRESS unless the config/flags say otherwise; the
pipeline says which it chose."""
from __future__ import annotations

import pytest

from edg.cluster.runtime import use_ray


@pytest.mark.parametrize("env,setting,expected", [
    ({}, None, False),
    ({"RAY_ADDRESS": "10.0.0.1:6379"}, None, True),
    ({"RAY_JOB_CONFIG_JSON_ENV_VAR": '{"runtime_env": {}}'}, None, True),  # set by `ray job submit`
    ({"RAY_ADDRESS": "10.0.0.1:6379"}, False, False),  # the config or --no-ray wins
    ({}, True, True),
])
def test_use_ray_follows_the_cluster_context_unless_told(monkeypatch, env, setting, expected):
    for k in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    on, why = use_ray(setting)
    assert on is expected and why


def test_the_demo_config_leaves_the_choice_to_the_context_and_the_pipeline_says_it(monkeypatch, tmp_path, capsys):
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    cfg = load_pipeline_config("configs/demo.yaml", {"out": str(tmp_path / "run")})
    assert cfg.ray.enabled is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert Pipeline(cfg).use_ray
    assert "stages run as Ray work (inside a Ray job or $RAY_ADDRESS is set)" in capsys.readouterr().out
    monkeypatch.delenv("RAY_ADDRESS")
    assert not Pipeline(cfg).use_ray


@pytest.fixture()
def short_tmp():
    import shutil
    import tempfile
    from pathlib import Path
    d = tempfile.mkdtemp(prefix="edgr")  # Ray's socket paths must stay under 108 characters
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.ray
def test_one_molecule_on_ray_gets_every_cpu_of_the_node(short_tmp, capsys, monkeypatch):
    """`edg dft --ray-address local` on one molecule: one actor holding both CPUs (PySCF threads follow
    the actor's CPUs), not one actor with one thread."""
    import argparse

    from edg.cluster.runtime import ray_session
    from edg.cluster.stage_args import add_worker_args, stage_workers
    p = argparse.ArgumentParser()
    add_worker_args(p)
    with ray_session("local", temp_dir=short_tmp, num_cpus=2):
        with stage_workers(p.parse_args(["--actors", "0"]), "x", items=1) as w:
            assert w.actors == 0
        monkeypatch.setenv("RAY_ADDRESS", "auto")  # as inside a Ray job: actors by default
        args = p.parse_args([])
        with stage_workers(args, "edg dft", uses_gpu=False, items=1) as w:
            assert (w.actors, w.cpus) == (1, 2.0)
        with stage_workers(args, "edg dft", uses_gpu=False, items=10) as w:
            assert (w.actors, w.cpus) == (2, 1.0)
    assert "edg dft: 1 Ray actors x 2 CPU" in capsys.readouterr().out


@pytest.mark.ray
def test_a_local_runtime_removes_its_session_folder(monkeypatch, short_tmp):
    import glob
    import tempfile

    from edg.cluster.runtime import ray_session
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))  # where mkdtemp puts the session folder
    with ray_session("local", num_cpus=1) as resources:
        assert resources["CPU"] == 1
        assert len(glob.glob(f"{short_tmp}/edgray*")) == 1
    assert glob.glob(f"{short_tmp}/edgray*") == []
