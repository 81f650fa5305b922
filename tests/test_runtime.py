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


@pytest.mark.parametrize("env,address,expected", [
    ({}, None, None),                                               # nothing asked: a private runtime
    ({}, "local", None),
    ({"RAY_ADDRESS": "10.0.0.1:6379"}, None, "10.0.0.1:6379"),
    ({"RAY_ADDRESS": "10.0.0.1:6379"}, "local", None),              # the flag wins over the environment
    ({}, "auto", "auto"),                                           # opting in to a head on this machine
    ({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, None, "auto"),          # inside a Ray job: its cluster
    ({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, "local", "auto"),
])
def test_which_cluster_is_stated_and_never_a_strangers_head(monkeypatch, env, address, expected):
    from edg.cluster.runtime import choose_cluster
    for k in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    target, why = choose_cluster(address)
    assert target == expected and why


@pytest.mark.ray
def test_an_unreachable_address_is_one_line_not_a_silent_local_runtime(monkeypatch):
    import ray
    from edg.cluster.runtime import RayClusterError, ray_session
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    with pytest.raises(RayClusterError) as e:
        with ray_session("127.0.0.1:1"):
            pass
    assert "127.0.0.1:1" in str(e.value) and "\n" not in str(e.value)
    assert not ray.is_initialized()


@pytest.mark.ray
def test_the_private_runtime_listens_on_loopback_and_never_writes_home(monkeypatch, short_tmp, tmp_path):
    """EDG's own runtime: every socket its processes listen on is bound to 127.0.0.1, token authentication
    with a token in its session folder, nothing under $HOME/.ray, and the auth environment restored after."""
    import os

    import psutil
    from edg.cluster.runtime import ray_session
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for k in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    with ray_session(None, temp_dir=short_tmp, num_cpus=1):
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert os.environ["RAY_AUTH_TOKEN_PATH"].startswith(str(short_tmp))
        me = psutil.Process()
        pids = {p.pid for p in me.children(recursive=True)}
        listening = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert listening, "no listening sockets found for the runtime's processes"
        loopback = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
        wide = sorted({(c.laddr.ip, c.laddr.port) for c in listening if c.laddr.ip not in loopback})
        assert not wide, f"the private runtime listens beyond loopback: {wide}"
    assert not (home / ".ray").exists()
    assert all(k not in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"))
