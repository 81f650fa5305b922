"""Rendering: ED isosurface images (6 x RGB-D) and ball-and-stick structure images (4 x RGB) in plain torch,
plus a PyMOL reference renderer (``render.reference``) and the render worker (``render.worker``).

Entry points: ``Renderer`` (batched), ``render_ed`` and ``render_structure`` (one molecule), ``RenderConfig``.
"""
from .config import RenderConfig
from .renderer import Renderer, render_ed, render_structure

__all__ = ["RenderConfig", "Renderer", "render_ed", "render_structure"]
