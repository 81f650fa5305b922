"""One config resolver: a YAML value of the wrong type is refused before any work starts, naming the file, the
key, the value and the expected type, by `edg dft`, `edg render`, `edg pretrain` and `edg pipeline --config`
alike (the same pipeline-style file); the stage commands share one set of worker flags."""
from __future__ import annotations

import pytest
from edg.cluster.cli import build_parser, main
from edg.edg_core.config import ConfigError, from_dict

BAD = [
    ("dft:\n  max_cycle: ten\n", "dft: max_cycle: 'ten' is not a valid int"),
    ("ray:\n  dft: {actors: two}\n", "ray: dft: actors: 'two' is not a valid int"),
    ("students:\n  seeds: '42'\n", "students: seeds: '42' is not a valid list"),
    ("render:\n  image_size: 22.5\n", "render: image_size: 22.5 is not a valid int"),
    ("dft:\n  fields: 'yes'\n", "dft: fields: 'yes' is not a valid bool"),
]


@pytest.mark.parametrize("text,message", BAD)
@pytest.mark.parametrize("command", ["dft", "render", "pipeline", "pretrain"])
def test_wrong_types_are_refused_before_any_work(tmp_path, capsys, command, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    argv = {"dft": ["dft", "--input", "embedded:qm9?limit=1", "--out", str(out), "--config", str(cfg)],
            "render": ["render", "--input", "embedded:qm9?limit=1", "--out", str(out), "--config", str(cfg)],
            "pipeline": ["pipeline", "--config", str(cfg), "--out", str(out)],
            "pretrain": ["pretrain", "imageed", "--shards", str(tmp_path), "--out", str(out), "--config", str(cfg)]
            }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: {message}" in err
    assert not out.exists()  # nothing started


def test_from_dict_checks_nested_types_and_converts_what_yaml_cannot_say():
    from edg.dft.config import DFTConfig
    from edg.render.config import RenderConfig
    assert from_dict(DFTConfig, {"grid_spacing": 1}).grid_spacing == 1.0  # an int where a float is expected
    assert isinstance(from_dict(DFTConfig, {"esp_band": [0.01, 0.2]}).esp_band, tuple)
    with pytest.raises(ConfigError, match=r"esp_band\[1\]: 'x' is not a valid float"):
        from_dict(DFTConfig, {"esp_band": [0.01, "x"]}, where="f.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RenderConfig, {"imag_size": 3})
    with pytest.raises(ConfigError, match="True is not a valid int"):
        from_dict(RenderConfig, {"image_size": True})


def test_every_stage_command_has_the_same_worker_flags():
    from edg.cluster.stage_args import WORKER_FLAGS
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    extract = next(a for a in sub["extract"]._actions if a.dest == "extract_command").choices
    commands = {"dft": sub["dft"], "render": sub["render"],
                "data convert": next(a for a in sub["data"]._actions if a.dest == "data_command").choices["convert"],
                "extract imageed-features": extract["imageed-features"],
                "extract teacher-targets": extract["teacher-targets"]}
    for name, p in commands.items():
        flags = {o for a in p._actions for o in a.option_strings}
        assert set(WORKER_FLAGS) <= flags, f"edg {name} lacks {set(WORKER_FLAGS) - flags}"
        group = next(g for g in p._action_groups if g.title.startswith("workers"))
        assert [a.help for a in group._group_actions if a.option_strings[0] in WORKER_FLAGS] == \
            [a.help for a in next(g for g in sub["dft"]._action_groups if g.title.startswith("workers"))
             ._group_actions if a.option_strings[0] in WORKER_FLAGS]  # the same words everywhere


def test_a_pipeline_config_whose_out_would_vanish_is_refused(tmp_path, monkeypatch):
    from edg.cluster.pipeline import load_pipeline_config
    from edg.edg_core.errors import EDGError
    monkeypatch.delenv("EDG_ALLOW_MEMORY_OUT", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: memory://runs/x\n")
    with pytest.raises(EDGError, match="memory:// lives only as long as this process"):
        load_pipeline_config(cfg)
    assert load_pipeline_config(None, {"out": f"file://{tmp_path}/run"}).out == f"{tmp_path}/run"


def test_edg_pretrain_takes_its_section_of_a_pipeline_config():
    import yaml
    from edg.cluster.commands.pretrain import resolve_config
    parser = build_parser()
    demo = yaml.safe_load(open("configs/demo.yaml"))
    args = parser.parse_args(["pretrain", "imageed", "--shards", "x", "--out", "y", "--config", "configs/demo.yaml"])
    cfg = resolve_config(args)
    assert cfg.epochs == demo["imageed"]["epochs"] and cfg.model.embed_dim == demo["imageed"]["model"]["embed_dim"]
    args = parser.parse_args(["pretrain", "teacher", "--shards", "x", "--out", "y", "--config", "configs/demo.yaml",
                              "--epochs", "3"])
    assert resolve_config(args).epochs == 3  # flags win over the file
    # the model sizes the pipeline file sets count as the user's choice (not adapted to the shards)
    from edg.cluster.commands.pretrain import explicit_model_fields
    set_in_file = {k for k in ("img_size", "patch_size", "n_views", "fu_dim") if k in demo["teacher"]["model"]}
    assert set_in_file and explicit_model_fields(args) == set_in_file


def _alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" list for a list-valued field: level 0 is 9 strings, each next level 9 aliases of the
    one before, so 9 ** levels strings once expanded, from about 1 KB of YAML."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "dft:\n  esp_band: [" + ", ".join(items) + "]\n"


@pytest.mark.parametrize("command", ["dft", "pipeline"])
def test_a_yaml_alias_bomb_is_refused_in_one_line_without_expanding(tmp_path, command):
    import os
    import subprocess
    import sys
    from pathlib import Path
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_alias_bomb())
    assert cfg.stat().st_size < 1100
    argv = {"dft": ["dft", "--input", "embedded:qm9?limit=1", "--out", str(tmp_path / "out"), "--config", str(cfg)],
            "pipeline": ["pipeline", "--config", str(cfg), "--out", str(tmp_path / "out")]}[command]
    code = "import sys; from edg.cluster.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].endswith(f"{cfg}: the YAML holds more than 100000 values once its aliases are expanded "
                             "(an alias bomb?); refused")
    assert not (tmp_path / "out").exists()


def test_a_small_alias_and_a_cycle(tmp_path):
    from edg.dft.config import DFTConfig
    from edg.edg_core.config import load_yaml, read_yaml
    ok = tmp_path / "ok.yaml"
    ok.write_text("band: &b [0.01, 0.2]\ndft:\n  esp_band: *b\n")
    assert load_yaml(DFTConfig, ok, "dft").esp_band == (0.01, 0.2)  # aliases as such are fine
    cyc = tmp_path / "cycle.yaml"
    cyc.write_text("dft:\n  esp_band: &c [1, *c]\n")
    with pytest.raises(ConfigError, match=r"cycle\.yaml: a YAML alias refers to a node that contains it"):
        read_yaml(cyc)
    deep = tmp_path / "deep.yaml"
    deep.write_text("dft: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: nested too deep"):
        read_yaml(deep)


def test_values_in_error_messages_are_truncated():
    from edg.dft.config import DFTConfig
    with pytest.raises(ConfigError) as e:
        from_dict(DFTConfig, {"esp_band": list(range(100_000))}, where="f.yaml")
    assert len(str(e.value)) < 200 and str(e.value).startswith("f.yaml: esp_band: [0, 1, 2, 3, 4, 5, ...]")
    with pytest.raises(ConfigError) as e:
        from_dict(DFTConfig, {"max_cycle": "x" * 10_000}, where="f.yaml")
    assert len(str(e.value)) < 300, str(e.value)[:400]
