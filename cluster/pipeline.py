"""``edg pipeline``: every stage of EDG, in order, each resumable, with a run manifest.

    read -> DFT -> render (or fused DFT+render) -> ED shards -> ImageED -> F_U -> teacher
         -> structure images of the student set -> teacher targets -> distillation (w/o and w/ EDG) -> tables

``input`` is one spec or a list of specs (their union). An input whose dataset carries its densities
(``edbench:DIR``: EDBench's ``Mol1_Dt.cube`` / ``Mol1_ESP.cube``) needs no DFT: the DFT stage leaves it out
(and says so; with only such inputs it runs nothing) and the render stage draws its ED images from the cubes
(``render.cube_input``). Every other input goes through the DFT stage; a ``pcqm4mv2`` file on Ray actors is read
by the actors themselves, each its own byte range (``cluster.stages.run_items``).

A stage that finished writes ``<out>/<stage>/DONE.json`` (its summary) and is skipped on a rerun; a stage that
was interrupted resumes from what it wrote (DFT result files, finished shards, training checkpoints, finished
distillation runs). ``<out>/config.yaml`` is the resolved config and ``<out>/manifest.json`` the run manifest
(inputs, versions, seeds, counts, failures, timings).

``out`` may be a local or shared folder, or any fsspec URL (``s3://bucket/runs/paper``). For a URL, DFT
result files and shards are uploaded whole by whoever writes them (Ray actors on any node included), and
everything else (markers, manifest, checkpoints, teacher targets, distillation runs) lives in a local working
copy (``work_dir``) that is pulled at the start, pushed every ``sync_s`` seconds and after every stage, and
pulled again after a stage whose Ray workers wrote into the run. A rerun anywhere resumes from the URL.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from edg.edg_core.config import ConfigError, dump_yaml, from_dict, merge_nested, read_yaml, to_dict
from edg.edg_core.io import read_jsonl, write_json_atomic
from edg.edg_core.run_folder import RunFolder
from edg.edg_core.stage import StageSpec, resolve
from edg.train.configs import FitConfig

from . import registry
from .stages import Workers, batch_stage, run_extract, run_fused, run_items, run_render

log = logging.getLogger(__name__)
STAGES = registry.NAMES  # in the order they run (cluster/registry.py)


@dataclass
class _RayBase:
    enabled: bool | None = None            # None: Ray inside a Ray job or when $RAY_ADDRESS is set; False: no Ray
    address: str | None = None             # None: a Ray job's cluster, $RAY_ADDRESS, else a private runtime
    temp_dir: str | None = None            # session files of a runtime started here
    train_workers: int = 1                 # Ray Train ranks for ImageED / teacher
    use_gpu: bool = False                  # one GPU per training rank
    max_failures: int = 1                  # Ray Train restarts after a worker failure
    distill_cpus: float = 1.0              # CPUs per distillation run (runs go out as Ray tasks)
    distill_gpus: float = 0.0


@dataclass
class StudentsConfig:
    """The distillation grid: students x datasets x lambdas x seeds. ``fit`` fields left unset take the paper's
    settings per student and dataset family (``train.paper_settings``)."""
    dataset: str = "rmd17:aspirin"         # a dataset spec with a task (edg_core.datasets), used when ``datasets``
    #                                        is empty
    datasets: list = field(default_factory=list)  # several datasets (Table 1: 12 QM9 targets; Table 2: 10 molecules)
    # input spec(s) of the training conformations (teacher targets): one spec or a list of specs
    conformations: str | list = "rmd17:aspirin?split=train"
    task: dict = field(default_factory=dict)    # task overrides (root, train_size, ...), or {<family>: {...}, ...}
    students: list | dict = field(default_factory=lambda: ["schnet"])  # a list, or {<family>: [...], ...}
    lambdas: list = field(default_factory=lambda: [0.0, 0.1])
    seeds: list = field(default_factory=lambda: [42])
    student_args: dict = field(default_factory=dict)
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self):
        """Every dataset and conformation spec parses (one-line ``SpecError`` otherwise) before any stage runs."""
        from edg.edg_core.datasets import resolve
        for spec in self.dataset_list():
            resolve(spec, "task")
        for spec in self.conformation_specs():
            resolve(spec)

    def dataset_list(self) -> list[str]:
        return list(self.datasets) or [self.dataset]

    def conformation_specs(self) -> list[str]:
        return [self.conformations] if isinstance(self.conformations, str) else list(self.conformations)

    def students_for(self, dataset: str) -> list[str]:
        """The students of ``dataset``: the list, or the entry of its paper family (``edg_core.datasets``)."""
        if isinstance(self.students, dict):
            from edg.edg_core.datasets import group_of
            return list(self.students.get(group_of(dataset), []))
        return list(self.students)

    def task_for(self, dataset: str) -> dict:
        """Task overrides of ``dataset``: ``task`` itself, or its family's entry when keyed by family (a dataset
        without a family: by its name)."""
        from edg.edg_core.datasets import DATASETS, families, group_of
        if self.task and set(self.task) <= set(families()) | set(DATASETS):
            return dict(self.task.get(group_of(dataset)) or {})
        return dict(self.task)


# the ray: section: the settings above, and one Workers section per batch stage of the registry (dft, render)
RayConfig = dataclasses.make_dataclass(
    "RayConfig", [(name, Workers, field(default_factory=lambda n=actors: Workers(actors=n)))
                  for name, actors in registry.ray_sections()], bases=(_RayBase,),
    namespace={"__doc__": "Where the stages run on Ray: the base settings and a ``Workers`` section per batch "
                          "stage (``cluster.registry.ray_sections``).", "__module__": __name__})


@dataclass
class _PipelineBase:
    out: str = "runs/pipeline"             # a folder, or an fsspec URL (s3://bucket/runs/x, gs://...)
    work_dir: str | None = None            # local working copy of a URL out (None: $EDG_CACHE/staging/<hash>)
    sync_s: float = 60.0                   # push the working copy of a URL out this often (seconds)
    input: str | list = "qm9?split=train"  # conformations for ED images and pretraining: one spec or a list (their
    #                                        union); inputs carrying their densities (edbench:DIR) skip DFT
    fused: bool = False                    # DFT + render in one actor (GPU: fields stay on the device)
    keep_fields: bool = False              # also store float16 ED/ESP grids in the shards
    device: str | None = None              # torch device for local stages (None: cuda if present)
    stop_after: str | None = None          # run the stages up to and including this one
    ray: RayConfig = field(default_factory=RayConfig)


# where a section's pipeline default differs from its dataclass's: the pipeline renders the ESP it computes, so
# the DFT computes it where the renderer samples it (band) unless cube files are asked for (dft.config esp_mode)
SECTION_DEFAULTS = {"dft": {"esp_mode": "auto"}}


def _section_default(section: str, cls: type):
    return functools.partial(cls, **SECTION_DEFAULTS.get(section, {}))


# the pipeline config: the settings above and one section per stage config of the registry, typed by its
# stage's dataclass (dft: DFTConfig, render: RenderConfig, imageed, teacher, students)
PipelineConfig = dataclasses.make_dataclass(
    "PipelineConfig", [(section, cls, field(default_factory=_section_default(section, cls)))
                       for section, cls in registry.config_sections()],
    bases=(_PipelineBase,),
    namespace={"__doc__": "A whole pipeline run: ``out`` and the run settings, ``ray``, and one section per "
                          "stage config (``cluster.registry.config_sections``).", "__module__": __name__})


def load_pipeline_config(path: str | Path | None = None, overrides: dict | None = None) -> PipelineConfig:
    """Paper defaults (with the pipeline's ``SECTION_DEFAULTS``) <- YAML file <- ``overrides`` (a nested dict,
    e.g. from flags). Every section is typed by its stage's own dataclass (``DFTConfig``, ``RenderConfig``,
    ``ImageEDTrainConfig``, ``TeacherTrainConfig``, ``FitConfig``, ``Workers``), so a wrong value is refused
    here, naming the file, the key, the value and the expected type, before any stage runs."""
    data = merge_nested(merge_nested(SECTION_DEFAULTS, read_yaml(path) if path is not None else {}), overrides or {})
    where = str(path or "pipeline config")
    if isinstance(data.get("out"), str):
        from edg.edg_core.storage import check_location

        from .runtime import check_job_output
        # memory:// would vanish with this process; a relative out inside a Ray job with the job's working copy
        data["out"] = check_location(check_job_output(data["out"], "out:"), persistent=True)
    cfg = from_dict(PipelineConfig, data, where=where)
    if cfg.teacher.model.fu_dim != cfg.imageed.model.embed_dim:
        raise ConfigError(f"{where}: teacher.model.fu_dim ({cfg.teacher.model.fu_dim}) must equal "
                          f"imageed.model.embed_dim ({cfg.imageed.model.embed_dim}): the teacher predicts F_U")
    from edg.edg_core.datasets import resolve
    specs = input_specs(cfg.input)
    if not specs:
        raise ConfigError(f"{where}: input is an empty list; give at least one input spec")
    for spec in specs:
        resolve(spec)  # a bad input spec: one SpecError line before any stage runs (students': StudentsConfig)
    if cfg.stop_after is not None and cfg.stop_after not in STAGES:
        raise ConfigError(f"{where}: stop_after {cfg.stop_after!r} is not a stage; stages: {', '.join(STAGES)}")
    return cfg


def input_specs(value: str | list) -> list[str]:
    """The input specs of a pipeline config's ``input`` (one spec or a list of them), in order."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def carries_fields(spec: str) -> bool:
    """Whether the dataset of ``spec`` carries its ED/ESP (the registry's ``fields``: EDBench's cubes), so its
    ED images need no DFT."""
    from edg.edg_core.datasets import dataset_of
    ds = dataset_of(spec)
    return ds is not None and ds.fields is not None


def resolve_section(args, section: str):
    """The config of one stage for a stage command (``edg dft``, ``edg render``): its dataclass defaults <- the
    ``section`` of ``--config`` <- flags. ``--config`` means the same file for every command: a pipeline config,
    checked whole (every section typed) before any work starts."""
    from edg.edg_core.config import apply_args
    base = getattr(load_pipeline_config(args.config), section) if args.config else \
        PipelineConfig.__dataclass_fields__[section].default_factory()
    return apply_args(base, args)


class Pipeline:
    """Runs the stages of a ``PipelineConfig`` (see the module docstring). ``run()`` returns the manifest."""

    def __init__(self, cfg, force: tuple[str, ...] = (), overwrite: bool = False):
        self.cfg = cfg
        # the run folder; its checks and lease come in run(). A URL out gets a working copy that persists
        # ($EDG_CACHE/staging/<hash> or work_dir), so a rerun on this machine finds what it had.
        self.run_folder = RunFolder.at(cfg.out, work_dir=cfg.work_dir, temporary=False)
        self.overwrite = overwrite
        self.force = set(force)
        unknown = sorted(self.force - set(STAGES))
        if unknown:
            raise ConfigError(f"--force {' '.join(unknown)}: not a stage; stages: {', '.join(STAGES)}")
        self.manifest: dict = {}
        from .runtime import use_ray
        self.use_ray, why = use_ray(cfg.ray.enabled)
        print(f"[ray] {'stages run as Ray work' if self.use_ray else 'every stage in this process'} ({why})",
              flush=True)

    @property
    def out(self) -> Path:
        """Where this process writes the run's small files; the run folder itself unless ``out`` is a URL."""
        return self.run_folder.local

    @property
    def store(self):
        """The run's working copy (``storage.Mirror``): ``remote``, ``local``, ``pull``/``push``."""
        return self.run_folder.mirror

    # where the artefacts are (each stage's ``output``): DFT results and shards where they live (URLs for a
    # remote out), the rest in the working copy
    ARTEFACTS = {"dft": "dft", "ed_shards": "render", "fu_shards": "features", "student_shards": "student_images",
                 "imageed": "imageed", "teacher": "teacher", "targets": "teacher_targets", "distill": "distill"}

    def path(self, name: str):
        spec = registry.spec(self.ARTEFACTS[name])
        if spec.sink in ("shards", "result_files"):
            return self.run_folder.where(spec.output)
        return self.out / spec.output

    def folder(self, stage: str) -> RunFolder:
        """The sub-folder of the run where the batch stage ``stage`` writes (its ``output``)."""
        return self.run_folder.child(registry.spec(stage).output)

    def _workers(self, stage: str) -> Workers:
        section = registry.spec(stage).ray_section
        return getattr(self.cfg.ray, section) if self.use_ray and section else Workers(actors=0)

    def run_batch(self, spec: StageSpec, items, args: dict, total: int | None = None, batch_size: int = 1) -> dict:
        """Run the declared batch stage ``spec`` over ``items`` into its folder of this run, on its workers; the
        summary as a dict. A stage's ``step`` calls this (it is handed the pipeline, never imports it). A source
        that its actors can read in byte ranges (``pcqm4mv2``) goes out as parts (``cluster.stages.run_items``)."""
        return run_items(batch_stage(spec, args, batch_size=batch_size), items, self.folder(spec.name),
                         self._workers(spec.name), total=total).to_dict()

    def run_fused(self, src) -> dict:
        """DFT and rendering of every molecule of ``src`` in one actor (``fused: true``)."""
        return run_fused(src, self.folder("render"), self.folder("dft"), self.cfg.dft, self.cfg.render,
                         self._workers("dft"), total=len(src), keep_fields=self.cfg.keep_fields).to_dict()

    # ---------------------------------------------------------------- inputs: DFT, or densities shipped with them
    def dft_inputs(self) -> list[str]:
        """The input specs that need DFT (no densities of their own), in order."""
        return [s for s in input_specs(self.cfg.input) if not carries_fields(s)]

    def field_inputs(self) -> list[str]:
        """The input specs that carry their densities (EDBench's cubes): rendered without DFT."""
        return [s for s in input_specs(self.cfg.input) if carries_fields(s)]

    def step_of(self, spec: StageSpec):
        """What the pipeline runs for ``spec``: its declared step, except that the DFT and render steps are the
        pipeline's own (``dft_union``, ``render_union``) when ``input`` is not one spec needing DFT: a list, or
        an input carrying its densities."""
        plain = isinstance(self.cfg.input, str) and not self.field_inputs()
        if not plain and spec.name == "dft":
            return Pipeline.dft_union
        if not plain and spec.name == "render":
            return Pipeline.render_union
        return resolve(spec.step)

    def dft_union(self) -> dict:
        """DFT of every input that needs it, one input after another into the run's ``dft/`` (fused: DFT and
        rendering into ``shards/ed``); the inputs that carry their densities are left to the render step. With
        none to compute, nothing runs and the summary says why."""
        from edg.dft.stage import DFT
        from edg.edg_core.readers import open_source
        from edg.edg_core.run_folder import DFTLayout
        plain, cubes = self.dft_inputs(), self.field_inputs()
        if cubes:
            print(f"[dft] no DFT for {', '.join(cubes)}: their densities come with them (cube files; the render "
                  "stage reads them)", flush=True)
        if not plain:
            return {"skipped": "no DFT: every input carries its densities (cube files)", "field_inputs": cubes}
        run = self.folder(DFT.name)
        run.remove_interrupted_writes(DFTLayout.FIELDS)
        per_input = {}
        for spec in plain:
            src = open_source(spec)
            per_input[spec] = (self.run_fused(src) if self.cfg.fused else
                               self.run_batch(DFT, src, {"cfg": self.cfg.dft, "out": run.writer()}, total=len(src)))
        return {**_sum_counts(per_input.values()), "inputs": per_input, "field_inputs": cubes}

    def render_union(self) -> dict:
        """ED and structure images into ``shards/ed`` from the DFT results of the run (unless ``fused``: the DFT
        step rendered them) and from the cube files of every input carrying its densities, in one pass of the
        stage driver (a molecule id found twice is one ``read`` failure); then the contact sheet."""
        import itertools

        from edg.dft.worker import result_files
        from edg.edg_core.datasets import dataset_of, resolve
        from edg.edg_core.readers import open_source
        from edg.render.stage import RENDER, worker_args
        parts, total = [], 0
        if self.dft_inputs() and not self.cfg.fused:
            paths = result_files(self.folder("dft").where())
            parts.append(paths)
            total += len(paths)
        for spec in self.field_inputs():
            parts.append(dataset_of(spec).field_items(resolve(spec)))  # (molecule, cube reference) per record
            total += len(open_source(spec))
        if parts:
            summary = self.run_batch(RENDER, itertools.chain.from_iterable(parts),
                                     worker_args(self.cfg.render, self.cfg.device, keep_fields=self.cfg.keep_fields),
                                     total=total, batch_size=self.cfg.render.batch_size)
        else:  # fused, and no input carries its densities: the DFT step rendered everything
            summary = {"fused": True}
        summary["field_inputs"] = self.field_inputs()
        summary["contact_sheet"] = str(self.contact_sheet())
        return summary

    def _stage(self, name: str, fn) -> dict:
        marker = self.out / "stages" / f"{name}.json"
        if marker.exists() and name not in self.force:
            summary = json.loads(marker.read_text())
            log.info("stage %s: finished before, skipped", name)
            print(f"[{name}] finished before ({summary.get('seconds', '?')} s): skipped", flush=True)
            return summary
        print(f"[{name}] running", flush=True)
        t0 = time.time()
        summary = fn() or {}
        summary["seconds"] = round(time.time() - t0, 2)
        self.store.pull()  # what Ray workers and stage drivers uploaded (failure manifests, checkpoints)
        write_json_atomic(marker, summary)
        self.store.push()
        quiet = {"seconds", "failures", "stage", "unit", "total"}  # bookkeeping; zero counters say nothing either
        print(f"[{name}] done in {summary['seconds']:.1f} s: "
              + ", ".join(f"{k}={v}" for k, v in summary.items()
                          if k not in quiet and not (k in ("actors", "retried", "actors_replaced") and not v)),
              flush=True)
        return summary

    # ---------------------------------------------------------------- the training steps (cluster/registry.py)
    def contact_sheet(self, n: int = 4) -> Path:
        """``<out>/contact_sheet.png``: every ED view (RGB and depth) and structure view of the first molecules."""
        from edg.render.contact_sheet import contact_sheet, first_molecules
        rows = []
        for s in first_molecules(self.path("ed_shards"), n):  # smallest ids, natural order (qm9:2 < qm9:10)
            rows += [(f"{s['meta']['id']} ED", s["edimg"]), (f"{s['meta']['id']} structure", s["stimg"])]
        path = self.out / "contact_sheet.png"
        contact_sheet(rows, path)
        return path

    def _pretrain(self, stage: str, cfg, shards: Path, out: Path) -> dict:
        if self.use_ray:
            from .train_ray import train_on_ray
            return train_on_ray(stage, cfg, shards, out, self.store, num_workers=self.cfg.ray.train_workers,
                                use_gpu=self.cfg.ray.use_gpu, max_failures=self.cfg.ray.max_failures)
        from edg.train.loops.pretrain import train_imageed, train_teacher
        train = train_imageed if stage == "imageed" else train_teacher
        return train(cfg, shards, out, device=self.cfg.device)

    def imageed(self) -> dict:
        return self._pretrain("imageed", self.cfg.imageed, self.path("ed_shards"), self.path("imageed"))

    def features(self) -> dict:
        from edg.train.io.model_files import load_imageed
        model = load_imageed(self.path("imageed") / "imageed.pt")
        return run_extract("imageed", model, self.path("ed_shards"), self.folder("features"),
                           device=self.cfg.device).to_dict()

    def teacher(self) -> dict:
        return self._pretrain("teacher", self.cfg.teacher, self.path("fu_shards"), self.path("teacher"))

    def student_images(self) -> dict:
        """Structure images of every training conformation of every student data set (one shard folder)."""
        import itertools

        from edg.edg_core.readers import open_source
        sources = [open_source(spec) for spec in self.cfg.students.conformation_specs()]
        total = sum(len(s) for s in sources)
        return run_render(itertools.chain.from_iterable(sources), self.folder("student_images"), self.cfg.render,
                          self._workers("student_images"), total=total, ed=False, device=self.cfg.device).to_dict()

    def teacher_targets(self) -> dict:
        from edg.train.io.model_files import load_teacher
        teacher = load_teacher(self.path("teacher") / "teacher.pt")
        return run_extract("teacher", teacher, self.path("student_shards"), self.run_folder,
                           file=self.path("targets").name, batch_size=128, device=self.cfg.device).to_dict()

    def distill_configs(self) -> list:
        from edg.train.loops.distill import DistillConfig
        from edg.train.models.edg_head import EDGConfig

        from .distill_runs import grid
        st = self.cfg.students
        cfgs = []
        for dataset in st.dataset_list():  # every student of the dataset's family x lambdas x seeds
            students = st.students_for(dataset)
            if not students:
                continue
            base = DistillConfig(student=students[0], dataset=dataset, out=str(self.path("distill")),
                                 fit=st.fit, task=st.task_for(dataset), student_args=dict(st.student_args),
                                 edg=EDGConfig(ed_predictor=str(self.path("teacher") / "teacher.pt"),
                                               teacher_targets=str(self.path("targets"))))
            cfgs += grid(base, students, [dataset], st.lambdas, st.seeds)
        return cfgs

    def distill(self) -> dict:
        from edg.train.loops.distill import run_distill
        from edg.train.report import collect_results, write_report
        cfgs = self.distill_configs()
        if self.use_ray:
            from .distill_runs import run_on_ray
            self.store.push()  # the teacher and its targets, for runs on other nodes
            run_on_ray(cfgs, self.cfg.ray.distill_cpus, self.cfg.ray.distill_gpus,
                       run_url=self.store.remote, work_dir=str(self.out))
            self.store.pull()
        else:
            for c in cfgs:
                run_distill(c)
        wanted = {c.run_name() for c in cfgs}
        results = [r for r in collect_results(self.path("distill")) if r["run"] in wanted]
        paths = write_report(self.path("distill"), results)
        return {"runs": len(results), "tables": str(paths.get("markdown", "")),
                "test": {r["run"]: r["test"] for r in results}}

    # ---------------------------------------------------------------- driver
    def run(self) -> dict:
        """Open the run folder (refusals, the single-writer lease), run the stages, release the lease."""
        self.run_folder.acquire(overwrite=self.overwrite, command="edg pipeline")
        try:
            if self.store.remote:
                n = self.store.pull()
                print(f"[storage] {self.store.remote}: working copy {self.out} ({n} files fetched)", flush=True)
            with self.store.autosync(self.cfg.sync_s):
                return self._run()
        finally:
            self.run_folder.close()

    def _run(self) -> dict:
        dump_yaml(to_dict(self.cfg), self.out / "config.yaml")
        t0 = time.time()
        self.manifest = {"config": str(self.out / "config.yaml"), "input": self.cfg.input,
                         "student_conformations": self.cfg.students.conformations,
                         "seeds": {"imageed": self.cfg.imageed.seed, "teacher": self.cfg.teacher.seed,
                                   "students": list(self.cfg.students.seeds)},
                         "versions": _versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}}
        if self.use_ray:
            from .runtime import ray_session
            with ray_session(self.cfg.ray.address, temp_dir=self.cfg.ray.temp_dir) as resources:
                self.manifest["ray_resources"] = dict(resources)
                self._run_stages()
        else:
            self._run_stages()
        self.manifest["seconds"] = round(time.time() - t0, 2)
        self.manifest["failures"] = self.failures()
        write_json_atomic(self.out / "manifest.json", self.manifest)
        return self.manifest

    def _run_stages(self) -> None:
        for spec in registry.specs():
            step = self.step_of(spec)
            self.manifest["stages"][spec.name] = self._stage(spec.name, lambda step=step: step(self))
            write_json_atomic(self.out / "manifest.json", self.manifest)
            if spec.name == self.cfg.stop_after:
                break

    def failures(self) -> dict:
        """Every failure manifest of the run: {path: number of entries}."""
        return {str(p): len(read_jsonl(p)) for p in sorted(self.out.rglob("failures.jsonl"))}


def _sum_counts(summaries) -> dict:
    """The counters of several stage summaries added up (``done``, ``failed``, ``skipped``, ``total``)."""
    out = {}
    for s in summaries:
        for k in ("total", "done", "failed", "skipped"):
            if isinstance(s.get(k), int):
                out[k] = out.get(k, 0) + s[k]
    return out


def _versions() -> dict:
    import importlib.metadata as md
    v = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("edg", "torch", "timm", "torch-geometric", "pyscf", "ray", "webdataset", "numpy"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v
