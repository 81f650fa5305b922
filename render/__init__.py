"""Rendering: ED isosurface images (6 x RGB-D) and ball-and-stick structure images (4 x RGB) in plain torch,
plus a PyMOL reference renderer (``render.reference``) and the render worker (``render.worker``).

Entry points: ``Renderer`` (batched), ``render_ed`` and ``render_structure`` (one molecule), ``RenderConfig``.
The renderer (and torch) load on first use, so ``render.config`` stays cheap to import (the CLI needs it).
"""
if not __name__.startswith("edg."):  # the pre-0.2 name `render`: alias it to edg.render, once, with a warning
    from edg._legacy import redirect
    redirect(__name__)

from .config import RenderConfig

__all__ = ["RenderConfig", "Renderer", "render_ed", "render_structure"]


def __getattr__(name: str):
    if name in ("Renderer", "render_ed", "render_structure"):
        from . import renderer
        return getattr(renderer, name)
    raise AttributeError(f"module 'render' has no attribute {name!r}")
