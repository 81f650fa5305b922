"""Renderer settings. Defaults reproduce the paper's PyMOL recipe (ED isosurface 0.05, ESP ramp
[-0.08, 0, 0.08] red-white-blue, transparency 0.4, 6 ED views and 4 structure views of 224 x 224, ball and
stick with stick radius 0.15 and sphere scale 0.2)."""
from __future__ import annotations

from dataclasses import dataclass, field

ED_VIEWS = ("x,0", "x,180", "x,90", "x,-90", "y,90", "y,-90")
STRUCTURE_VIEWS = ("x,0", "x,180", "y,180", "z,180")


@dataclass
class RenderConfig:
    image_size: int = field(default=224, metadata={"help": "image height = width in pixels"})
    iso: float = field(default=0.05, metadata={"help": "ED isosurface level, e/bohr^3"})
    esp_stops: tuple[float, ...] = field(default=(-0.08, 0.0, 0.08),
                                         metadata={"help": "ESP ramp stops (Hartree/e) for red, white, blue"})
    transparency: float = field(default=0.4, metadata={"help": "surface transparency (PyMOL sense)"})
    ed_views: tuple[str, ...] = field(default=ED_VIEWS, metadata={"help": "ED views as axis,degrees (PyMOL turn)"})
    structure_views: tuple[str, ...] = field(default=STRUCTURE_VIEWS, metadata={"help": "structure views"})
    fourth_channel: str = field(default="depth", metadata={"help": "ED channel 4: depth (true depth) or alpha"})
    ed_margin: float = field(default=2.0, metadata={"help": "Å added to the molecule radius when fitting ED views"})
    structure_margin: float = field(default=1.0, metadata={"help": "Å added when fitting structure views"})
    angstrom_per_pixel: float | None = field(default=None, metadata={
        "help": "fixed world scale (Å per pixel) instead of fitting each molecule"})
    hydrogens: bool = field(default=True, metadata={"help": "draw hydrogens in the ball-and-stick structure"})
    stick_radius: float = field(default=0.15, metadata={"help": "bond cylinder radius, Å"})
    stick_h_scale: float = field(default=0.4, metadata={"help": "radius factor of bonds to hydrogen (PyMOL)"})
    sphere_scale: float = field(default=0.2, metadata={"help": "ball radius = sphere_scale x vdW radius"})
    bond_tolerance: float = field(default=0.45, metadata={"help": "bond if d < r_cov_i + r_cov_j + this (Å)"})
    structure_in_ed: bool = field(default=True, metadata={"help": "draw the ball-and-stick inside the ED surface"})
    step_voxels: float = field(default=1.0, metadata={"help": "ray-march step in voxels of the finest grid axis"})
    bisection_steps: int = field(default=6, metadata={"help": "bisection steps refining each crossing"})
    max_layers: int = field(default=4, metadata={"help": "surface crossings composited per ray"})
    samples_per_chunk: int = field(default=1 << 25, metadata={"help": "density samples per march chunk (memory)"})
    batch_size: int = field(default=8, metadata={"help": "molecules rendered together"})
    max_atoms: int = field(default=0, metadata={
        "help": "refuse (failure manifest) molecules with more atoms than this before rendering (0 = no limit)"})
    max_grid_points: int = field(default=0, metadata={
        "help": "refuse molecules whose ED/ESP grid has more points than this (0 = no limit)"})
    soft_coverage: bool = field(default=False, metadata={"help": "differentiable (sigmoid) silhouettes"})
    soft_width: float = field(default=0.005, metadata={"help": "sigmoid width of soft coverage, e/bohr^3"})
    ed_background: tuple[float, ...] = field(default=(0.0, 0.0, 0.0), metadata={"help": "ED background RGB"})
    structure_background: tuple[float, ...] = field(default=(1.0, 1.0, 1.0), metadata={"help": "structure bg RGB"})
    ambient: float = 0.14
    direct: float = 0.45
    reflect: float = 0.45
    specular: float = 0.5
    shininess: float = 55.0
    light: tuple[float, ...] = field(default=(-0.4, -0.4, -1.0), metadata={
        "help": "light travel direction in camera space (PyMOL `light`)"})

    def __post_init__(self):
        if self.fourth_channel not in ("depth", "alpha"):
            raise ValueError(f"fourth_channel must be 'depth' or 'alpha', got {self.fourth_channel!r}")
        if len(self.esp_stops) != 3:
            raise ValueError(f"esp_stops needs 3 values (red, white, blue), got {self.esp_stops}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
