"""The pipeline computes the ESP where the renderer samples it (band mode) unless cube files are asked for:
``esp_mode: auto``, the pipeline's (and ``edg dft``'s) default; ``DFTConfig`` itself keeps ``full``."""
from __future__ import annotations

import numpy as np
import pytest
from edg.cluster.pipeline import PipelineConfig, load_pipeline_config
from edg.dft.config import DFTConfig
from edg.dft.worker import DFTWorker, find_result
from edg.edg_core.molecule import Molecule
from edg.edg_core.shards import to_uint8

WATER = Molecule(z=[8, 1, 1], pos=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
                 id="water")


def test_auto_is_band_on_the_cpu_unless_cubes_are_written():
    assert DFTConfig().esp_mode == "full"  # the library default is unchanged
    auto = DFTConfig(esp_mode="auto")
    assert auto.esp_mode_for("cpu") == "band"
    assert DFTConfig(esp_mode="auto", save_cubes=True).esp_mode_for("cpu") == "full"
    assert auto.esp_mode_for("gpu") == "full"  # the GPU computes the whole cube in a fraction of a second
    assert DFTConfig(esp_mode="band", save_cubes=True).esp_mode_for("cpu") == "band"  # asked for: given


def test_the_pipeline_default_is_auto_and_a_config_file_keeps_or_sets_it(tmp_path):
    assert PipelineConfig().dft.esp_mode == "auto"
    other = tmp_path / "other.yaml"
    other.write_text("dft:\n  backend: cpu\n  basis: sto-3g\n")
    cfg = load_pipeline_config(other)
    assert cfg.dft.esp_mode == "auto" and cfg.dft.basis == "sto-3g"  # a dft: section without esp_mode keeps it
    full = tmp_path / "full.yaml"
    full.write_text("dft:\n  esp_mode: full\n")
    assert load_pipeline_config(full).dft.esp_mode == "full"
    assert load_pipeline_config(other, {"dft": {"save_cubes": True}}).dft.esp_mode_for("cpu") == "full"


def test_auto_computes_the_full_esp_when_cube_files_are_written(tmp_path):
    fast = dict(backend="cpu", basis="sto-3g", grid_spacing=0.8, esp_mode="auto")
    band = DFTWorker(DFTConfig(**fast), out=None).compute(WATER)
    cubes = DFTWorker(DFTConfig(**fast, save_cubes=True), out=tmp_path)
    assert cubes.process(WATER)["status"] == "done"
    assert 0 < band.esp_exact_fraction < 0.6
    from edg.dft.result import load_result
    r = load_result(find_result(tmp_path, "water"))
    assert r.esp_exact_fraction == 1.0 and (tmp_path / "cubes" / "water.esp.cube").exists()


def test_images_from_band_mode_fields_are_within_one_level_of_full_mode_images(tmp_path):
    """What the pipeline renders, at its settings (0.4-bohr grid, float16 result files, 6 views at 224 px): the
    band ESP is exact at every grid point the renderer reads, so the ED images stay within 1/255. Away from the
    surface it is interpolated and differs from the full ESP by many colour levels: a renderer reading those
    points would fail this test."""
    from edg.render import RenderConfig, Renderer
    from edg.render.stage import molecule_and_fields
    torch = pytest.importorskip("torch")
    fields = {}
    for mode in ("full", "band"):
        w = DFTWorker(DFTConfig(backend="cpu", basis="6-31g", grid_level=1, esp_mode=mode), out=tmp_path / mode)
        assert w.process(WATER)["status"] == "done"
        fields[mode] = molecule_and_fields(find_result(tmp_path / mode, "water"))[1]
    full, band = fields["full"], fields["band"]
    np.testing.assert_array_equal(band.ed, full.ed)  # the same SCF and density
    step = 0.16 / 255  # one level of the ESP colour ramp [-0.08, 0.08] Hartree/e
    assert np.abs(band.esp - full.esp).max() > 10 * step  # band mode really is another field off the surface
    renderer = Renderer(RenderConfig())
    images = {}
    for mode, f in fields.items():
        img, _ = renderer.ed_images([torch.as_tensor(WATER.z)], [torch.as_tensor(WATER.pos, dtype=torch.float32)],
                                    [torch.as_tensor(f.ed)], [torch.as_tensor(f.esp)], [f.grid])
        images[mode] = to_uint8(img[0]).astype(np.int16)
    assert images["full"].shape == (6, 4, 224, 224)
    assert np.abs(images["band"] - images["full"]).max() <= 1
    assert images["full"][:, :3].std() > 10  # coloured surfaces, not an empty frame
