"""Dataclass configs: YAML in, YAML out, and one CLI flag per field.

Every stage defines its own dataclass with defaults that reproduce the paper; this module only moves
values between dataclasses, dicts, YAML files and argparse.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import EDGError
from .io import write_bytes_atomic

C = TypeVar("C")


class ConfigError(EDGError, ValueError):
    pass


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def from_dict(cls: type[C], data: dict | None, where: str = "config") -> C:
    """Build ``cls`` from a (nested) dict; unknown keys are an error naming the key and the place."""
    data = dict(data or {})
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        t = hints[name]
        if _is_dataclass_type(t) and isinstance(value, dict):
            value = from_dict(t, value, f"{where}.{name}")
        elif typing.get_origin(t) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def load_yaml(cls: type[C], path: str | Path, section: str | None = None) -> C:
    """Load ``cls`` from a YAML file (optionally one top-level ``section`` of it)."""
    import yaml
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if section is not None:
        data = data.get(section, {})
    return from_dict(cls, data, where=f"{path}" + (f":{section}" if section else ""))


def dump_yaml(obj, path: str | Path) -> None:
    """Write a resolved config next to a run's outputs (atomically)."""
    import yaml
    data = obj if isinstance(obj, dict) else to_dict(obj)
    write_bytes_atomic(path, yaml.safe_dump(_plain(data), sort_keys=False).encode())


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def _scalar_type(t):
    """The parser type of a field annotation: int/float/str/bool, unwrapping ``X | None``."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0] if len(args) == 1 else str
    return t


def add_config_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` for every scalar field of ``cls`` (nested dataclasses get ``--outer.inner``).

    Defaults are ``None`` so that only flags the user typed override a YAML file or the dataclass defaults.
    """
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        t = hints[f.name]
        flag = "--" + prefix + f.name.replace("_", "-")
        if _is_dataclass_type(t):
            add_config_args(parser, t, prefix=prefix + f.name.replace("_", "-") + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore
        help_ = (f.metadata.get("help", "") + f" (default: {default})").strip()
        dest = (prefix + f.name).replace(".", "__").replace("-", "_")
        st = _scalar_type(t)
        if st is bool:
            parser.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction, help=help_)
        elif typing.get_origin(st) in (tuple, list):
            inner = typing.get_args(st)[0] if typing.get_args(st) else str
            parser.add_argument(flag, dest=dest, default=None, nargs="+", type=inner, help=help_)
        elif st in (int, float, str):
            parser.add_argument(flag, dest=dest, default=None, type=st, help=help_)
        else:
            parser.add_argument(flag, dest=dest, default=None, help=help_)


def apply_args(obj: C, args: argparse.Namespace, prefix: str = "") -> C:
    """Return a copy of ``obj`` with every flag the user gave (not None) applied."""
    changes = {}
    hints = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        t = hints[f.name]
        if _is_dataclass_type(t):
            changes[f.name] = apply_args(getattr(obj, f.name), args, prefix=prefix + f.name + ".")
            continue
        dest = (prefix + f.name).replace(".", "__").replace("-", "_")
        v = getattr(args, dest, None)
        if v is not None:
            changes[f.name] = tuple(v) if isinstance(v, list) else v
    return dataclasses.replace(obj, **changes)
