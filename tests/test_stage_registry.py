"""The stage registry (cluster/registry.py): one list that the pipeline's order, its config and ray: sections,
--stop-after and the batch driver read; declarations that import neither Ray nor cluster/; and a stage added
with one declaration and one registry entry that runs in the pipeline with its own config and ray sections."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from edg.cluster import registry
from edg.cluster.pipeline import STAGES, PipelineConfig, RayConfig
from edg.edg_core.stage import StageSpec, resolve

ROOT = Path(__file__).resolve().parent.parent


def _fresh(code: str, tmp_path: Path, extra_path: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), extra_path) if p)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_pipeline_order_and_sections_come_from_the_registry():
    assert STAGES == registry.NAMES == ("dft", "render", "imageed", "features", "teacher", "student_images",
                                        "teacher_targets", "distill")
    for s in registry.specs():
        assert isinstance(s, StageSpec) and callable(resolve(s.step))
        if s.worker:
            assert hasattr(resolve(s.worker), "process_batch")
    sections = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}
    for section, cls in registry.config_sections():
        assert sections[section] is cls
    assert [name for name, _ in registry.config_sections()] == ["dft", "render", "imageed", "teacher", "students"]
    ray = RayConfig()
    assert (ray.dft.actors, ray.render.actors) == (2, 1)
    assert registry.spec("student_images").ray_section == "render"


def test_declarations_import_neither_ray_nor_cluster_and_the_cli_imports_no_declaration(tmp_path):
    r = _fresh("""
        import sys
        import edg.dft.stage, edg.render.stage
        bad = sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "edg.cluster", "torch")))
        assert not bad, bad
        from edg.cluster.cli import build_parser
        build_parser()
        for m in ("edg.cluster.registry",):
            assert m in sys.modules
        print("ok")
    """, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    r = _fresh("""
        import sys
        from edg.cluster.cli import build_parser
        build_parser()
        loaded = sorted(m for m in sys.modules if m in ("torch", "edg.dft.stage", "edg.render.stage"))
        assert not loaded, loaded
        print("ok")
    """, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_stop_after_lists_the_registry(capsys):
    import pytest
    from edg.cluster.cli import main
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"stop after this stage ({', '.join(registry.NAMES)})" in out


def test_a_stage_added_with_a_declaration_and_a_registry_entry_runs_in_the_pipeline(tmp_path):
    """The declaration lives in its own module; the only other edit is its registry line (here made at run
    time, before the pipeline is imported). Its config section and ray section exist without further edits."""
    pkg = tmp_path / "mystage"
    pkg.mkdir()
    (pkg / "counts.py").write_text(textwrap.dedent('''
        import json
        from collections import Counter
        from dataclasses import dataclass

        from edg.edg_core.shards import encode_sample
        from edg.edg_core.stage import BatchResult, StageSpec


        @dataclass
        class CountsConfig:
            heavy_only: bool = False


        class Counter_:
            def __init__(self, cfg):
                self.cfg = cfg

            def process_batch(self, mols):
                res = BatchResult()
                for m in mols:
                    c = Counter(s for s in m.symbols if not (self.cfg.heavy_only and s == "H"))
                    res.samples.append({**encode_sample(m), "elements.json": json.dumps(dict(c)).encode()})
                return res


        def step(p):
            from edg.edg_core.readers import open_source
            src = open_source(p.cfg.input)
            return p.run_batch(ELEMENTS, src, {"cfg": p.cfg.elements}, total=len(src), batch_size=4)


        ELEMENTS = StageSpec(name="elements", step="counts:step", config="counts:CountsConfig",
                             worker="counts:Counter_", sink="shards", shard_prefix="elements",
                             output="shards/elements", actors=1)
    '''))
    out = tmp_path / "run"
    r = _fresh(f"""
        import json
        import edg.cluster.registry as r
        r.DECLARED = (("elements", "counts:ELEMENTS"),) + r.DECLARED   # the registry entry
        r.NAMES = tuple(n for n, _ in r.DECLARED)
        from edg.cluster.pipeline import Pipeline, load_pipeline_config
        cfg = load_pipeline_config(None, {{"out": {str(out)!r}, "input": "embedded:qm9?limit=5",
                                           "elements": {{"heavy_only": True}},
                                           "ray": {{"enabled": False, "elements": {{"actors": 3}}}},
                                           "stop_after": "elements"}})
        assert cfg.ray.elements.actors == 3
        m = Pipeline(cfg).run()
        print(json.dumps(m["stages"]["elements"]))
    """, tmp_path, extra_path=str(pkg))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (5, 0)
    from edg.edg_core.shards import iter_shard, shard_paths
    got = {raw["__key__"]: json.loads(raw["elements.json"])
           for p in shard_paths(out / "shards" / "elements") for raw in iter_shard(p)}
    assert got == {"qm9:1": {"C": 1}, "qm9:2": {"N": 1}, "qm9:3": {"O": 1}, "qm9:4": {"C": 2},
                   "qm9:5": {"C": 1, "N": 1}}  # heavy_only from its config section: no H counted
    assert not (out / "stages" / "dft.json").exists()  # it stopped after the new stage, which ran first
