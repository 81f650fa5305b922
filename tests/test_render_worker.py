"""Render worker and `edg render` CLI: shards with edimg/stimg, resume, failure manifest, preview."""
from __future__ import annotations

import json

import pytest
import torch
from edg.edg_core.grid import CubeGrid
from edg.edg_core.io import read_jsonl
from edg.edg_core.readers import open_source
from edg.edg_core.shards import decode_sample, read_samples
from edg.render import RenderConfig
from edg.render.worker import Fields, RenderWorker


@pytest.fixture(scope="module")
def water_dft(tmp_path_factory):
    """A DFT output folder (dft.worker layout) with water and methane at a small basis."""
    from edg.cluster.stages import Workers, run_dft
    from edg.dft.config import DFTConfig
    out = tmp_path_factory.mktemp("dft")
    mols = [m for m in open_source("embedded:qm9").molecules() if m.formula in ("H2O", "CH4")]
    assert run_dft(mols, out, DFTConfig(backend="cpu", basis="sto-3g"), Workers()).done == len(mols)
    return out, mols


def test_worker_samples_and_bad_record_isolated():
    mols = list(open_source("embedded:qm9?limit=3").molecules())
    n = 9
    good = Fields(CubeGrid((-3.0,) * 3, (0.75,) * 3, (n,) * 3), torch.rand(n, n, n) * 0.1, torch.zeros(n, n, n))
    bad = Fields(good.grid, torch.rand(n, n, n - 1), torch.zeros(n, n, n))  # wrong ED shape
    w = RenderWorker(RenderConfig(image_size=16, batch_size=3), device="cpu", keep_fields=True)
    res = w.render(mols, [good, None, bad])
    assert [s["__key__"] for s in res.samples] == [mols[0].id, mols[1].id]
    assert len(res.failures) == 1 and res.failures[0].record == mols[2].id
    assert res.failures[0].stage == "render" and "ED grid shape" in res.failures[0].reason
    d0, d1 = decode_sample(res.samples[0]), decode_sample(res.samples[1])
    assert d0["edimg"].shape == (6, 4, 16, 16) and d0["stimg"].shape == (4, 3, 16, 16)
    assert "edimg" not in d1 and d1["stimg"].shape == (4, 3, 16, 16)
    assert d0["ed"].shape == (n, n, n)
    fr = d0["meta"]["render"]["ed_framing"]
    assert fr["angstrom_per_pixel"] == pytest.approx(2 * fr["half_width_angstrom"] / 16)


def test_cli_fields_resume_and_preview(water_dft, tmp_path, capsys):
    from edg.cluster.cli import main
    dft_out, mols = water_dft
    out = tmp_path / "shards"
    sheet = tmp_path / "sheet.png"
    args = ["render", "--fields", str(dft_out), "--out", str(out), "--image-size", "24", "--fourth-channel",
            "alpha"]
    assert main(args + ["--preview", str(sheet), "--preview-count", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[1])
    assert summary["done"] == 2 and summary["failed"] == 0
    samples = list(read_samples(out))
    assert sorted(s["meta"]["id"] for s in samples) == sorted(m.id for m in mols)
    for s in samples:
        assert s["edimg"].shape == (6, 4, 24, 24)
        alpha = s["edimg"][:, 3]
        assert 0.05 < float((alpha > 0.5).float().mean()) < 0.9  # a surface, not empty, not everything
    assert sheet.exists() and sheet.stat().st_size > 1000
    assert (out / "render_config.yaml").read_text().count("fourth_channel: alpha") == 1
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[1])["skipped"] == 2
    # an input molecule without a DFT result is reported, the others are rendered
    out2 = tmp_path / "shards2"
    assert main(["render", "--input", "embedded:qm9?limit=3", "--fields", str(dft_out), "--out", str(out2),
                 "--image-size", "16"]) == 0
    fails = read_jsonl(out2 / "failures.jsonl")
    assert len(fails) >= 1 and all("no DFT result" in f["reason"] for f in fails)
    rendered = list(read_samples(out2))
    assert len(rendered) == 3 - len(fails) and all(s["edimg"].shape[0] == 6 for s in rendered)
