"""The DFT stage, declared once (``edg_core.stage.StageSpec``; listed in ``cluster/registry.py``).

Molecules in; one result file per molecule out (``<run>/fields/<pp>/<key>.npz``, ``DFTLayout``), written by
the workers themselves. This module imports neither Ray nor ``cluster/``: the pipeline hands itself to
``pipeline_step``.
"""
from __future__ import annotations

from edg.edg_core.run_folder import DFTLayout
from edg.edg_core.stage import StageSpec


def pipeline_step(p) -> dict:
    """``edg pipeline``'s DFT step (``p``: the ``cluster.pipeline.Pipeline``): every molecule of ``p.cfg.input``
    into the run's ``dft/``; with ``fused`` DFT and rendering run in one actor (``p.run_fused``)."""
    from edg.edg_core.readers import open_source
    src = open_source(p.cfg.input)
    if p.cfg.fused:
        return p.run_fused(src)
    run = p.folder(DFT.name)
    run.remove_interrupted_writes(DFTLayout.FIELDS)
    return p.run_batch(DFT, src, {"cfg": p.cfg.dft, "out": run.writer()}, total=len(src))


DFT = StageSpec(
    name="dft", step="edg.dft.stage:pipeline_step",
    help="B3LYP single points and ED/ESP grids, one result file per molecule",
    config="edg.dft.config:DFTConfig", worker="edg.dft.worker:DFTWorker",
    items="molecules (edg_core.molecule.Molecule)", sink="result_files", done_keys="edg.dft.worker:done_keys",
    output="dft", actors=2)
