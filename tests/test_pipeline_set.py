"""`edg pipeline --set SECTION.KEY=VALUE` overrides any config field, typed like the YAML, over every section the
stage registry declares; `--print-config` shows the resolved config and runs nothing."""
from __future__ import annotations

import pytest
import yaml
from edg.cluster.cli import main
from edg.cluster.registry import NAMES
from edg.edg_core.config import ConfigError, merge_nested, parse_assignments


def test_assignments_nest_and_type():
    assert parse_assignments(["students.fit.epochs=5", "dft.basis=sto-3g", "ray.dft.actors=4",
                              "students.lambdas=[0, 0.1]", "teacher.model.fu_dim=null"]) == {
        "students": {"fit": {"epochs": 5}, "lambdas": [0, 0.1]}, "dft": {"basis": "sto-3g"},
        "ray": {"dft": {"actors": 4}}, "teacher": {"model": {"fu_dim": None}}}
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        parse_assignments(["epochs"])
    assert merge_nested({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_print_config_shows_the_overrides_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pipeline", "--config", "configs/demo.yaml", "--out", str(out), "--set", "students.fit.epochs=7",
                 "--set", "dft.basis=sto-3g", "--set", "ray.render.actors=3", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["students"]["fit"]["epochs"] == 7 and cfg["dft"]["basis"] == "sto-3g"
    assert cfg["ray"]["render"]["actors"] == 3 and cfg["out"] == str(out)
    assert all(name in cfg for name in ("dft", "render"))  # sections come from the stage registry
    assert set(NAMES) >= {"dft", "render"}
    assert not out.exists()


@pytest.mark.parametrize("assignment,message", [
    ("students.fit.epochz=7", "unknown key(s) ['epochz']"),
    ("students.fit.epochs=seven", "'seven' is not a valid int"),
    ("nosuchsection.x=1", "unknown key(s) ['nosuchsection']"),
])
def test_a_wrong_override_is_one_line(assignment, message, capsys):
    assert main(["pipeline", "--config", "configs/demo.yaml", "--set", assignment, "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
