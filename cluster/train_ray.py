"""Ray Train launcher for the pretraining loops in ``train/loops/pretrain.py``.

``run_pretraining("imageed" | "teacher", cfg, shards, out_dir, ...)`` starts a ``TorchTrainer`` with
``num_workers`` ranks (one GPU each with ``use_gpu``); Ray sets up ``torch.distributed`` and every rank runs
the plain loop, which wraps the model in DDP and splits the shards by rank. Each epoch's metrics go to
``ray.train.report`` (visible in the Ray dashboard), with rank 0's checkpoint file when one was written that
epoch (``checkpoint_every``), as a folder holding ``checkpoint.pt`` kept under ``storage_path/name`` (the
newest ``keep_last``). Rank 0 also keeps ``metrics.jsonl``, ``metrics.csv`` and ``progress.json`` in
``out_dir`` up to date after every epoch, as in a local run. When a worker dies, Ray restarts the group up to
``max_failures`` times and the loop resumes from the last reported checkpoint. ``out_dir`` and ``shards`` must
be reachable from every worker (one machine, or a shared file system) unless ``out_url`` is given: then every
rank works in a temporary copy of that URL (pulled at start, so a restarted group finds the last checkpoint),
rank 0 pushes it after every epoch, and Ray keeps no checkpoint of its own; ``shards`` may be a URL too.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

STAGES = ("imageed", "teacher")


def _train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    from edg.edg_core.config import from_dict
    from edg.train.loops import pretrain

    stage = config["stage"]
    cls = pretrain.ImageEDTrainConfig if stage == "imageed" else pretrain.TeacherTrainConfig
    cfg = from_dict(cls, config["cfg"], where=f"{stage} config")
    train = pretrain.train_imageed if stage == "imageed" else pretrain.train_teacher
    device = ray.train.torch.get_device()
    if config.get("out_url"):
        from edg.edg_core.storage import Mirror
        run = Mirror(config["out_url"], temporary=True)
        run.pull()  # the last checkpoint, after a restart

        def push(metrics: dict, checkpoint: Path | None) -> None:
            if ray.train.get_context().get_world_rank() == 0:  # metrics.csv / progress.json every epoch
                run.push()
            ray.train.report(metrics)
        try:
            train(cfg, config["shards"], run.local, report=push, device=device)
        finally:
            run.close()  # a temporary copy (checkpoints included) per rank and restart
        return
    resume_from = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        local = Path(ckpt.to_directory()) / "checkpoint.pt"  # a restart after a failure
        if local.exists():
            resume_from = local

    def report(metrics: dict, checkpoint: Path | None) -> None:
        if checkpoint is None:  # no checkpoint this epoch (checkpoint_every), or not rank 0
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="edg-ckpt-") as tmp:  # Ray copies the folder into its storage
            try:
                os.link(checkpoint, Path(tmp) / "checkpoint.pt")  # no copy when on the same file system
            except OSError:
                shutil.copy2(checkpoint, Path(tmp) / "checkpoint.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    train(cfg, config["shards"], config["out_dir"], report=report, device=device, resume_from=resume_from)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return list(v)
    return v


def run_pretraining(stage: str, cfg, shards, out_dir, *, num_workers: int = 1, use_gpu: bool = False,
                    max_failures: int = 0, storage_path: str | os.PathLike | None = None, name: str | None = None,
                    cpus_per_worker: float = 1.0, out_url: str | None = None):
    """Train ``stage`` with Ray Train; returns the ``ray.train.Result`` (``.metrics``: last epoch,
    ``.checkpoint``: last checkpoint). Call inside a connected Ray runtime (``cluster.runtime.ray_session``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    if stage not in STAGES:
        raise ValueError(f"unknown pretraining stage {stage!r}; use one of {STAGES}")
    out_dir = Path(out_dir).resolve()
    from edg.edg_core.storage import is_remote
    def absolute(p) -> str:  # workers may start in another folder; patterns and URLs stay patterns and URLs
        return str(p) if is_remote(p) else os.path.abspath(p)
    shards = [absolute(p) for p in shards] if isinstance(shards, (list, tuple)) else absolute(shards)
    storage = Path(storage_path).resolve() if storage_path else out_dir / "ray"
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"stage": stage, "cfg": _plain(dataclasses.asdict(cfg)), "shards": shards,
                           "out_dir": str(out_dir), "out_url": out_url},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name or f"edg-{stage}", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=max(1, getattr(cfg, "keep_last", 1)))),
    )
    return trainer.fit()


def train_on_ray(stage: str, cfg, shards, out_dir, store=None, **kwargs) -> dict:
    """``run_pretraining`` into ``out_dir`` and the last epoch's metrics (from rank 0's ``metrics.jsonl``, also
    when a resumed run had no epoch left to report). ``store``: the ``Mirror`` whose working copy holds
    ``out_dir``; when it mirrors a URL, the ranks work on the URL (``out_url``) and push ``out_dir`` there."""
    from edg.edg_core.io import read_jsonl
    remote = store is not None and store.remote is not None
    out_url = None
    if remote:
        rel = Path(out_dir).resolve().relative_to(store.local.resolve()).as_posix()
        out_url = store.remote if rel == "." else str(store.where(rel))
    result = run_pretraining(stage, cfg, shards, out_dir, out_url=out_url, **kwargs)
    if result.error is not None:
        raise result.error
    if remote:
        store.pull()
    return read_jsonl(Path(out_dir) / "metrics.jsonl")[-1]
