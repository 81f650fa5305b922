"""The standalone model files of ImageED (``imageed.pt``) and the teacher (``teacher.pt``): what they hold
(``imageed_state``, ``teacher_state``) and how to read them back from a file, a training checkpoint or a run
folder (``load_imageed``, ``load_teacher``, ``load_ed_predictor``, ``build_ed_predictor``). Plain data only
(``train.io.checkpoint.load_checkpoint``)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from edg.edg_core.config import from_dict
from edg.edg_core.errors import DataSourceError, EDGError
from edg.train.configs import ImageEDConfig, TeacherConfig
from edg.train.models.imageed import ImageED
from edg.train.models.teacher import EDPredictor, Teacher
from torch import nn


def imageed_state(model: ImageED) -> dict:
    """The content of ``imageed.pt``: the config as a plain dict and the weights."""
    from dataclasses import asdict
    return {"imageed_config": asdict(model.cfg), "model": model.state_dict()}


def load_imageed(path, map_location="cpu") -> ImageED:
    """An ImageED (eval mode) from ``imageed.pt``, a training checkpoint, or a run folder holding either
    (``imageed.pt``, else ``checkpoint/best.pt``, else the newest ``checkpoint/epoch-*.pt``, else an older
    ``checkpoint/checkpoint.pt``: ``train.io.checkpoint.model_file``). Plain-data files only
    (``train.io.checkpoint.load_checkpoint``)."""
    from edg.edg_core.config import from_dict
    from edg.train.io.checkpoint import CheckpointError, load_checkpoint, model_file
    path = model_file(path, "imageed.pt", "ImageED")
    ck = load_checkpoint(path, map_location, "ImageED checkpoint")
    if "imageed_config" not in ck:
        raise CheckpointError(f"{path}: not an ImageED checkpoint (keys {sorted(ck)[:8]})")
    model = ImageED(from_dict(ImageEDConfig, ck["imageed_config"], where=f"{path}:imageed_config"))
    model.load_state_dict(ck["model"])
    return model.eval()



def teacher_state(model: Teacher) -> dict:
    """What a teacher checkpoint holds besides training state: the config, the whole model and the ED
    predictor on its own (so the students can load it without timm or the backbone)."""
    return {"teacher_config": asdict(model.cfg), "model": model.state_dict(),
            "ed_predictor": model.ed_predictor.state_dict(), "ed_predictor_dims": list(model.ed_predictor.dims)}


def load_teacher(path: str | Path, map_location="cpu") -> Teacher:
    """The teacher (eval mode) from ``teacher.pt``, a training checkpoint or a run folder (plain data only:
    ``train.io.checkpoint.load_checkpoint``)."""
    path, ck = _load(path, map_location)
    if "teacher_config" not in ck:
        raise EDGError(f"{path}: not a teacher checkpoint (keys {sorted(ck)[:8]}); expected 'teacher_config'")
    saved = {k: v for k, v in ck["teacher_config"].items() if k != "backbone_checkpoint"}  # a field of older files
    cfg = from_dict(TeacherConfig, _tuples(saved), where=f"{path}:teacher_config")
    model = Teacher(cfg)  # the weights come from the checkpoint itself, never from the hub
    model.load_state_dict(ck["model"])
    return model.eval()


def load_ed_predictor(path: str | Path, map_location="cpu") -> EDPredictor:
    """The frozen ED predictor (eval mode, requires_grad False) from a teacher checkpoint file."""
    path, ck = _load(path, map_location)
    if "ed_predictor" not in ck:
        raise EDGError(f"{path}: not a teacher checkpoint (keys {sorted(ck)[:8]}); expected 'ed_predictor'")
    edp = EDPredictor(*ck["ed_predictor_dims"])
    edp.load_state_dict(ck["ed_predictor"])
    for p in edp.parameters():
        p.requires_grad_(False)
    return edp.eval()


def _load(path, map_location) -> tuple[Path, dict]:
    """(file, content) of a teacher checkpoint; a run folder means its ``teacher.pt``, else its checkpoints
    (``train.io.checkpoint.model_file``)."""
    from edg.train.io.checkpoint import load_checkpoint, model_file
    path = model_file(path, "teacher.pt", "teacher")
    return path, load_checkpoint(path, map_location, "teacher checkpoint")


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}



def build_ed_predictor(path: str | None = None, seed: int = 0) -> nn.Module:
    """The teacher's ED predictor: trained weights from ``path`` (a plain-data teacher checkpoint; see
    ``train.io.checkpoint.load_checkpoint``), or a seeded random one (tests, stand-ins)."""
    from edg.train.io.model_files import load_ed_predictor
    from edg.train.models.teacher import EDPredictor
    if path:
        if not Path(path).exists():
            raise DataSourceError(f"ED predictor weights {path} do not exist")
        return load_ed_predictor(path)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return EDPredictor()
    finally:
        torch.random.set_rng_state(gen_state)

