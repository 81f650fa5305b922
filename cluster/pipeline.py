"""``edg pipeline``: every stage of EDG, in order, each resumable, with a run manifest.

    read -> DFT -> render (or fused DFT+render) -> ED shards -> ImageED -> F_U -> teacher
         -> structure images of the student set -> teacher targets -> distillation (w/o and w/ EDG) -> tables

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
from .stages import Workers, batch_stage, run_extract, run_fused, run_render, run_stage

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
    input: str = "qm9?split=train"               # conformations for DFT, ED images and pretraining
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
    resolve(cfg.input)  # a bad input spec: one SpecError line before any stage runs (students' specs: StudentsConfig)
    if cfg.stop_after is not None and cfg.stop_after not in STAGES:
        raise ConfigError(f"{where}: stop_after {cfg.stop_after!r} is not a stage; stages: {', '.join(STAGES)}")
    return cfg


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
        summary as a dict. A stage's ``step`` calls this (it is handed the pipeline, never imports it)."""
        return run_stage(batch_stage(spec, args, batch_size=batch_size), items, self.folder(spec.name),
                         self._workers(spec.name), total=total).to_dict()

    def run_fused(self, src) -> dict:
        """DFT and rendering of every molecule of ``src`` in one actor (``fused: true``)."""
        return run_fused(src, self.folder("render"), self.folder("dft"), self.cfg.dft, self.cfg.render,
                         self._workers("dft"), total=len(src), keep_fields=self.cfg.keep_fields).to_dict()

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
            step = resolve(spec.step)
            self.manifest["stages"][spec.name] = self._stage(spec.name, lambda step=step: step(self))
            write_json_atomic(self.out / "manifest.json", self.manifest)
            if spec.name == self.cfg.stop_after:
                break

    def failures(self) -> dict:
        """Every failure manifest of the run: {path: number of entries}."""
        return {str(p): len(read_jsonl(p)) for p in sorted(self.out.rglob("failures.jsonl"))}


def _versions() -> dict:
    import importlib.metadata as md
    v = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("edg", "torch", "timm", "torch-geometric", "pyscf", "ray", "webdataset", "numpy"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v
