"""EDG: electron-density-enhanced molecular geometry learning.

One import namespace over the repository's stage folders, so that nothing a user has in the working
directory (a ``train.py``, a ``cluster/`` folder) or in site-packages can shadow EDG's own code:

====================  ============================================================
``edg.edg_core``      molecules, units, typed configs, readers, shards, storage
``edg.dft``           B3LYP single points, ED and ESP on grids (folder ``dft/``)
``edg.render``        the torch ray-marcher and the PyMOL reference (``render/``)
``edg.train``         ImageED, the teacher, students, training loops (``train/``)
``edg.cluster``       the ``edg`` command line, the stage driver, Ray (``cluster/``)
``edg.serve``         ``edg serve``: the Ray Serve application (predict, render jobs, the page)
``edg.api``           the public Python API in one place (students, ASE, renderer, DFT)
====================  ============================================================

An installed wheel nests the folders under ``edg/``; in a checkout (editable install, ``ray job submit
--working-dir .``, a script run from the repository) they sit beside this package and ``_CheckoutFinder``
maps ``edg.<folder>`` onto them. The pre-0.2 names (``import train``) still work from a checkout for one
release, with a FutureWarning (``edg._legacy``).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.2.0"
FOLDERS = ("edg_core", "dft", "render", "train", "cluster", "serve")
_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_HERE)


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``edg.<folder>`` (one of ``FOLDERS``) in the checkout root; submodules then follow the
    package's own ``__path__``."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, folder = fullname.partition(".")
        if head != "edg" or folder not in FOLDERS:
            return None
        init = os.path.join(_CHECKOUT, folder, "__init__.py")
        if not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[os.path.dirname(init)])


def _in_checkout() -> bool:
    return (not os.path.isdir(os.path.join(_HERE, "train"))
            and all(os.path.isfile(os.path.join(_CHECKOUT, f, "__init__.py")) for f in FOLDERS))


if _in_checkout() and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutFinder())
