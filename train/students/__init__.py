"""Geometry students for EDG distillation: ``build_student(name, **overrides)``.

Every student is called as ``F_G, pred = model(z, pos, batch)`` (see ``base.py``) and has
``feature_dim`` (d_G, the size of F_G) and ``out_dim``. ``energy_and_forces`` adds forces by autograd.
Overrides are fields of the student's config dataclass (defaults reproduce the paper's baselines).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from edg.edg_core.config import from_dict, unknown_name

_WHERE: dict[str, tuple[str, str, str]] = {
    "schnet": ("schnet", "SchNetStudent", "SchNetConfig"),
    "visnet": ("visnet", "ViSNetStudent", "ViSNetConfig"),
    "dimenetpp": ("dimenetpp", "DimeNetPPStudent", "DimeNetPPConfig"),
    "egnn": ("egnn", "EGNNStudent", "EGNNConfig"),
    "painn": ("painn", "PaiNNStudent", "PaiNNConfig"),
    "spherenet": ("spherenet_geom3d", "SphereNetGeom3DStudent", "SphereNetGeom3DConfig"),
    "spherenet-edg": ("spherenet", "SphereNetStudent", "SphereNetConfig"),
    "equiformer": ("equiformer_geom3d", "EquiformerGeom3DStudent", "EquiformerGeom3DConfig"),
    "equiformer-edg": ("equiformer", "EquiformerStudent", "EquiformerConfig"),
}
"""Student name -> (module in this package, model class, config dataclass): the one registry."""


class _Registry(Mapping):
    """``STUDENTS[name] -> (model class, config dataclass)``, importing a student's module (and torch) only
    when it is looked up, so that names are checked (``in STUDENTS``, ``list(STUDENTS)``) before torch loads."""

    def __getitem__(self, name: str) -> tuple[type, type]:
        module, model, config = _WHERE[name]
        m = importlib.import_module(f"{__name__}.{module}")
        return getattr(m, model), getattr(m, config)

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


STUDENTS: Mapping[str, tuple[type, type]] = _Registry()
"""Student name -> (model class, config dataclass)."""

__all__ = ["STUDENTS", "Student", "build_student", "check_student_name", "config_for", "energy_and_forces", "pool"]


def __getattr__(name: str):
    if name in ("Student", "energy_and_forces", "pool"):
        from . import base
        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_student_name(name: str) -> None:
    """A one-line ``ConfigError`` with the nearest name for an unknown student; imports no torch."""
    if name not in _WHERE:
        raise unknown_name("student", name, _WHERE)


def config_for(name: str, **overrides):
    """The config dataclass of student ``name`` with ``overrides`` applied (unknown keys are an error)."""
    check_student_name(name)
    return from_dict(STUDENTS[name][1], overrides, where=f"student {name}")


def build_student(name: str, **overrides):
    """A freshly initialised student ``name`` (one of ``STUDENTS``) with config ``overrides``."""
    config = config_for(name, **overrides)
    return STUDENTS[name][0](config)
