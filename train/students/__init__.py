"""Geometry students for EDG distillation: ``build_student(name, **overrides)``.

Every student is called as ``F_G, pred = model(z, pos, batch)`` (see ``base.py``) and has
``feature_dim`` (d_G, the size of F_G) and ``out_dim``. ``energy_and_forces`` adds forces by autograd.
Overrides are fields of the student's config dataclass (defaults reproduce the paper's baselines).
"""
from __future__ import annotations

from edg.edg_core.config import from_dict, unknown_name

from .base import Student, energy_and_forces, pool
from .dimenetpp import DimeNetPPConfig, DimeNetPPStudent
from .egnn import EGNNConfig, EGNNStudent
from .equiformer import EquiformerConfig, EquiformerStudent
from .painn import PaiNNConfig, PaiNNStudent
from .schnet import SchNetConfig, SchNetStudent
from .spherenet import SphereNetConfig, SphereNetStudent
from .visnet import ViSNetConfig, ViSNetStudent

STUDENTS: dict[str, tuple[type, type]] = {
    "schnet": (SchNetStudent, SchNetConfig),
    "visnet": (ViSNetStudent, ViSNetConfig),
    "dimenetpp": (DimeNetPPStudent, DimeNetPPConfig),
    "egnn": (EGNNStudent, EGNNConfig),
    "painn": (PaiNNStudent, PaiNNConfig),
    "spherenet": (SphereNetStudent, SphereNetConfig),
    "equiformer": (EquiformerStudent, EquiformerConfig),
}
"""Student name -> (model class, config dataclass)."""

__all__ = ["STUDENTS", "Student", "build_student", "config_for", "energy_and_forces", "pool"]


def config_for(name: str, **overrides):
    """The config dataclass of student ``name`` with ``overrides`` applied (unknown keys are an error)."""
    if name not in STUDENTS:
        raise unknown_name("student", name, STUDENTS)
    return from_dict(STUDENTS[name][1], overrides, where=f"student {name}")


def build_student(name: str, **overrides) -> Student:
    """A freshly initialised student ``name`` (one of ``STUDENTS``) with config ``overrides``."""
    config = config_for(name, **overrides)
    return STUDENTS[name][0](config)
