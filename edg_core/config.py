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


def unknown_name(what: str, name: str, known) -> ConfigError:
    """The error for a name that is none of ``known``, with the nearest one as a hint:
    ``unknown <what> 'x' (did you mean 'y'?); known: a, b, ...``."""
    import difflib
    near = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    name = name if len(name) <= MAX_SHOWN else name[:MAX_SHOWN - 3] + "..."
    return ConfigError(f"unknown {what} {name!r}{hint}; known: {', '.join(known)}")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


MAX_SHOWN = 80  # characters of a value quoted in an error message


def shown(value) -> str:
    """``repr(value)`` for an error message, at most ``MAX_SHOWN`` characters; formatting stops early (reprlib:
    a few levels and items), so a huge value costs no more than a small one."""
    import reprlib
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring = r.maxother = r.maxlong = MAX_SHOWN
    text = r.repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _type_name(t) -> str:
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "")


def _coerce(value, t, where: str):
    """``value`` checked against the annotation ``t`` (and converted where YAML cannot say it: list -> tuple,
    int -> float); a mismatch is a ``ConfigError`` naming the place, the value and the expected type."""
    def bad():
        return ConfigError(f"{where}: {shown(value)} is not a valid {_type_name(t)}")
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is typing.Any or t is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise bad()
    if _is_dataclass_type(t):
        if isinstance(value, t):
            return value
        if isinstance(value, dict):
            return from_dict(t, value, where)
        raise ConfigError(f"{where}: expected a mapping of {t.__name__} fields, got {shown(value)}")
    if origin in (tuple, list) or t in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: {shown(value)} must have {len(args)} items ({_type_name(t)})")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else typing.Any
            items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or t) is tuple else list(items)
    if origin is dict or t is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if t is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if t is str:
        if isinstance(value, str):
            return value
        raise bad()
    if isinstance(t, type) and not isinstance(value, t):
        raise bad()
    return value


def from_dict(cls: type[C], data: dict | None, where: str = "config") -> C:
    """Build ``cls`` from a (nested) dict, type-checking every value against its field's annotation.

    Unknown keys and values of the wrong type are a ``ConfigError`` naming ``where`` (the file), the key, the
    value and the expected type, before any work starts.
    """
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {shown(data)}")
    data = dict(data or {})
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {shown(unknown)}; known: {sorted(names)}")
    kwargs = {name: _coerce(value, hints[name], f"{where}: {name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {str(e)[:200]}") from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


MAX_CONFIG_VALUES = 100_000  # values (scalars, keys, lists, mappings) a config may hold once aliases are expanded
MAX_CONFIG_BYTES = 4 << 20  # a larger config file is not parsed


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict (``{}`` when empty); a missing file, a non-mapping, a file over
    ``MAX_CONFIG_BYTES``, nesting deeper than the parser goes, or YAML aliases that expand to more than
    ``MAX_CONFIG_VALUES`` values (a "billion laughs" bomb: PyYAML shares aliased nodes, but every reader of the
    result walks them expanded) or refer to themselves is a one-line ``ConfigError``."""
    import yaml
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (shipped examples: configs/*.yaml)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes, over the {MAX_CONFIG_BYTES} a config file may have")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep to parse") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    _check_expanded_size(data, path)
    return data


def _check_expanded_size(data, path) -> None:
    """Refuse ``data`` when, counted with every alias expanded, it holds more than ``MAX_CONFIG_VALUES`` values,
    or when a container contains itself. Each shared node is counted once and reused, so the check costs the
    number of distinct nodes (bounded by the file), not the expanded size."""
    sizes: dict[int, int] = {}  # id(container) -> its expanded size
    open_: set[int] = set()  # containers being counted (a cycle comes back to one of them)

    def size(v) -> int:
        if not isinstance(v, (dict, list, set)):
            return 1
        key = id(v)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ConfigError(f"{path}: a YAML alias refers to a node that contains it (a cycle); refused")
        open_.add(key)
        total = 1 + (len(v) if isinstance(v, dict) else 0)  # the container and its keys
        for x in (v.values() if isinstance(v, dict) else v):
            total += size(x)
            if total > MAX_CONFIG_VALUES:
                raise ConfigError(f"{path}: the YAML holds more than {MAX_CONFIG_VALUES} values once its aliases "
                                  "are expanded (an alias bomb?); refused")
        open_.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep to check") from None


def load_yaml(cls: type[C], path: str | Path, section: str | None = None) -> C:
    """Load ``cls`` from a YAML file (optionally one top-level ``section`` of it)."""
    data = read_yaml(path)
    if section is not None:
        data = data.get(section) or {}
    return from_dict(cls, data, where=f"{path}" + (f": {section}" if section else ""))


def resolve(cls: type[C], args: argparse.Namespace | None = None, path: str | Path | None = None,
            section: str | None = None, prefix: str = "") -> C:
    """The config resolver of a command: dataclass defaults <- ``section`` of the YAML file ``path`` (types
    checked by ``from_dict``) <- the flags the user typed (``add_config_args``; argparse parsed their types).
    Stage commands reading a pipeline config use ``cluster.pipeline.resolve_section``, built on the same pieces."""
    cfg = load_yaml(cls, path, section) if path else cls()
    return apply_args(cfg, args, prefix) if args is not None else cfg


def parse_assignments(items: list[str] | None, what: str = "--set") -> dict:
    """``["students.fit.epochs=5", "dft.basis=sto-3g"]`` -> a nested dict (values read as YAML scalars or
    flow lists: ``5`` an int, ``[1, 2]`` a list, ``null`` None); types are checked where the dict is applied
    (``from_dict``), so a wrong key or value is refused there, naming it."""
    import yaml
    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.isidentifier() for p in parts):
            raise ConfigError(f"{what} {shown(item)}: expected SECTION.KEY=VALUE, e.g. students.fit.epochs=5")
        if len(text) > 10_000:
            raise ConfigError(f"{what} {parts[-1]}: a value over 10,000 characters")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{what} {key}: {shown(text)} is not a YAML value ({str(e).splitlines()[0]})") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{what} {key}: {p} was set to a value above")
        node[parts[-1]] = value
    return out


def merge_nested(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, dict values merged key by key at every depth."""
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge_nested(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


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
