"""The pre-0.2 import names (``import train``, ``from edg.cluster.cli import main``), kept for one release.

A stage folder imported by its old top-level name calls ``redirect``: the old name becomes an alias of the
``edg.<folder>`` module (the same module object, so classes and registries are shared), every submodule
``<folder>.x`` an alias of ``edg.<folder>.x``, and one FutureWarning names the new path. Only a checkout has
the old names (the folders sit on ``sys.path`` there); a wheel installs ``edg`` alone.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.3"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the import system rewrote it to the alias's spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, folders):
        self.folders = set(folders)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in self.folders or "." not in fullname:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"edg.{fullname}"))


_FINDER = _AliasFinder(())


def redirect(name: str) -> None:
    """Make the old top-level package ``name`` an alias of ``edg.<name>`` (call from its ``__init__``)."""
    warnings.warn(f"`import {name}` is deprecated and goes in EDG {REMOVED_IN}: import `edg.{name}` "
                  f"(the public API is `edg.api`)", FutureWarning, stacklevel=3)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    _FINDER.folders.add(name)
    sys.modules[name] = importlib.import_module(f"edg.{name}")
