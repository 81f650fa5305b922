"""The one registry of EDG's stages, in pipeline order: what ``edg pipeline`` runs, what ``--stop-after`` and
``--force`` accept, which sections ``PipelineConfig`` and its ``ray:`` section have.

Each entry names a stage and where its declaration (``edg_core.stage.StageSpec``) lives. Declarations are
imported on first use only, so ``edg --help`` imports none of them (nor torch). The batch stages are declared
in their own packages; the training steps (not batch stages: their loops live in ``train/``) are declared
here, their step being a ``Pipeline`` method.

Adding a stage: its package (a ``StageSpec`` and its worker), one line in ``DECLARED``, and its command module in
``cluster/commands/`` if it has one (found there by ``edg``).
"""
from __future__ import annotations

import functools

from edg.edg_core.stage import StageSpec, resolve

# (name, "module:StageSpec") in the order the pipeline runs them
DECLARED: tuple[tuple[str, str], ...] = (
    ("dft", "edg.dft.stage:DFT"),
    ("render", "edg.render.stage:RENDER"),
    ("imageed", "edg.cluster.registry:IMAGEED"),
    ("features", "edg.cluster.registry:FEATURES"),
    ("teacher", "edg.cluster.registry:TEACHER"),
    ("student_images", "edg.cluster.registry:STUDENT_IMAGES"),
    ("teacher_targets", "edg.cluster.registry:TEACHER_TARGETS"),
    ("distill", "edg.cluster.registry:DISTILL"),
)
NAMES: tuple[str, ...] = tuple(name for name, _ in DECLARED)


@functools.cache
def spec(name: str) -> StageSpec:
    """The declaration of stage ``name`` (imported now); ``KeyError`` for an unknown name."""
    s = resolve(dict(DECLARED)[name])
    if not isinstance(s, StageSpec) or s.name != name:
        raise TypeError(f"registry entry {name!r} -> {dict(DECLARED)[name]} is not the StageSpec named {name!r}")
    return s


def specs() -> tuple[StageSpec, ...]:
    """Every declaration, in pipeline order."""
    return tuple(spec(n) for n in NAMES)


def config_sections() -> list[tuple[str, type]]:
    """(section, config dataclass) of every stage that has a pipeline config section, in pipeline order."""
    return [(s.config_section, resolve(s.config)) for s in specs() if s.config]


def ray_sections() -> list[tuple[str, int]]:
    """(section, default actors) of every batch stage that declares its own ``ray:`` section."""
    return [(s.name, s.actors) for s in specs() if s.actors is not None]


# ---------------------------------------------------------------- the training steps of the pipeline
IMAGEED = StageSpec(name="imageed", step="edg.cluster.pipeline:Pipeline.imageed",
                    help="pretrain ImageED (masked autoencoder) on the ED images",
                    config="edg.train.configs:ImageEDTrainConfig", output="imageed")
FEATURES = StageSpec(name="features", step="edg.cluster.pipeline:Pipeline.features",
                     help="F_U of every ED-image sample (ImageED encoder)", items="ED-image shard samples",
                     sink="shards", output="shards/ed_fu")
TEACHER = StageSpec(name="teacher", step="edg.cluster.pipeline:Pipeline.teacher",
                    help="train the ED-aware teacher on structure images -> F_U",
                    config="edg.train.configs:TeacherTrainConfig", output="teacher")
STUDENT_IMAGES = StageSpec(name="student_images", step="edg.cluster.pipeline:Pipeline.student_images",
                           help="structure images of the student data sets' training conformations",
                           worker="edg.render.stage:RenderActor", items="molecules", sink="shards",
                           output="shards/student", ray="render")
TEACHER_TARGETS = StageSpec(name="teacher_targets", step="edg.cluster.pipeline:Pipeline.teacher_targets",
                            help="F_S and EDP(F_S) of every student conformation (teacher)",
                            items="structure-image shard samples", sink="npz", output="teacher_targets.npz")
DISTILL = StageSpec(name="distill", step="edg.cluster.pipeline:Pipeline.distill",
                    help="distil into geometry students (w/o and w/ EDG) and write the result tables",
                    config="edg.cluster.pipeline:StudentsConfig", section="students", output="distill")
