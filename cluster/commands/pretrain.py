"""``edg pretrain``: train ImageED (multi-view MAE on ED images) and the ED-aware teacher; draw Figure 5."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from edg.edg_core.config import add_config_args, apply_args, from_dict

IMAGEED_HELP = """\
Pretrain ImageED, a masked autoencoder over the 6 RGB-D ED images of each molecule (member `edimg` of the
shards, from `edg render`). Defaults are the paper's: ViT-B/16 at 224 px, mask ratio 0.25, L_MP + L_RP on
per-patch normalised pixels, AdamW (0.9, 0.95), wd 0.05, lr = 1.5e-4 x global batch / 256, 5 warm-up
epochs then cosine, 800 epochs.

Image size and views are read from the shards: a model size you did not set (--model.img-size,
--model.patch-size, --model.n-views) is adapted to them (a preset keeps its patch grid, so its cost), and a
size you set that does not fit is refused before any work, naming the flag.

A line per epoch goes to stderr (loss, validation loss with --val-fraction, lr, samples/s, ETA), with an
estimate of the time per epoch after the first steps. Outputs in --out: config.yaml (resolved),
metrics.jsonl, metrics.csv and progress.json (rewritten after every epoch), checkpoint/epoch-NNNNNN.pt
(plain data, every --checkpoint-every epochs and after the last, the newest --keep-last kept),
checkpoint/best.pt (lowest validation loss, with --val-fraction), imageed.pt when done, figures/ with
--figure-every. Rerunning the same command resumes after the last checkpoint. Then run
`edg extract imageed-features` to write F_U.

Examples (`make demo` writes runs/demo/shards/ed, 64 px images, and runs/demo/shards/ed_fu):
  edg pretrain imageed --shards runs/demo/shards/ed --out runs/demo-imageed --preset tiny --epochs 5
  edg pretrain imageed --shards runs/qm9/shards --out runs/imageed --epochs 100 --checkpoint-every 10
  edg pretrain imageed --shards /data/shards --out /data/imageed --ray --ray-workers 8 --use-gpu
"""

TEACHER_HELP = """\
Pretrain the ED-aware teacher: ResNet18 over the 4 structure images (`stimg`) with view-mean pooling -> F_S,
and the ED predictor EDP (512 -> 256 -> 768) trained with L1(EDP(F_S), F_U) on molecules that have F_U
(`fu`, from `edg extract imageed-features`). Defaults are the authors' (ED_teacher/): ResNet18 from timm's
ImageNet weights (hub or --model.pretrained-weights FILE; --no-model.pretrained: from scratch), SGD
lr 5e-3 constant (--cosine: decay), momentum 0.9, wd 1e-4, batch 128, 50 epochs, 2 % validation,
augmentations each with p = 0.2 drawn per view: rotation up to 360 degrees with black corners, Gaussian
blur with 3 taps (this project's earlier ones are options: docs/pretrain.md).

Image size, views and the F_U width (--model.fu-dim: the ImageED's embed_dim) are read from the shards as
for imageed. Outputs in --out as for imageed, with teacher.pt (loadable with train.io.model_files.load_teacher /
load_ed_predictor). Then run `edg extract teacher-targets`.

Examples (`make demo` writes runs/demo/shards/ed_fu: 64 px structure images, 64-wide F_U):
  edg pretrain teacher --shards runs/demo/shards/ed_fu --out runs/demo-teacher --preset tiny --epochs 3
  edg pretrain teacher --shards runs/qm9/shards-fu --out runs/teacher
  edg pretrain teacher --shards S --out R --model.pretrained-weights resnet18.safetensors   # offline
"""


def _add_common(p: argparse.ArgumentParser, presets) -> None:
    p.add_argument("--shards", required=True, help="shard folder, glob or brace pattern")
    p.add_argument("--out", required=True, help="run folder or fsspec URL (created; a rerun resumes from it)")
    p.add_argument("--preset", choices=sorted(presets), default=None,
                   help="model size preset (default: the paper's); 'tiny' is for CPU smoke runs")
    p.add_argument("--config", help="YAML file with the training config (section given by --config-section)")
    p.add_argument("--config-section", default=None, help="top-level YAML key to read (default: whole file)")
    p.add_argument("--device", default=None, help="torch device for a local run (default: cuda if present)")
    from edg.cluster.stage_args import add_overwrite_arg
    add_overwrite_arg(p)
    r = p.add_argument_group("Ray Train (multi-worker / multi-GPU)")
    r.add_argument("--ray", action="store_true", help="run with Ray Train instead of in this process")
    r.add_argument("--ray-workers", type=int, default=1, help="training ranks (default: 1)")
    r.add_argument("--use-gpu", action="store_true", help="one GPU per rank")
    r.add_argument("--max-failures", type=int, default=0, help="restarts after worker failures (default: 0)")
    from edg.cluster.runtime import ADDRESS_HELP
    r.add_argument("--ray-address", default=None, help=ADDRESS_HELP)


def register(sub) -> None:
    from edg.train.configs import IMAGEED_PRESETS, TEACHER_PRESETS, ImageEDTrainConfig, TeacherTrainConfig
    p = sub.add_parser("pretrain", help="pretrain ImageED or the ED-aware teacher",
                       description="Pretraining stages: imageed (ED images -> F_U), teacher (structure images "
                                   "-> F_S, EDP(F_S) ~ F_U), figure (reconstructions like the paper's Fig. 5).")
    psub = p.add_subparsers(dest="pretrain_command", metavar="<stage>", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    i = psub.add_parser("imageed", help="pretrain ImageED on ED images", description=IMAGEED_HELP,
                        formatter_class=fmt)
    _add_common(i, IMAGEED_PRESETS)
    add_config_args(i.add_argument_group("training config (ImageEDTrainConfig)"), ImageEDTrainConfig)
    i.set_defaults(func=cmd_pretrain, stage="imageed")

    t = psub.add_parser("teacher", help="pretrain the ED-aware teacher on structure images + F_U",
                        description=TEACHER_HELP, formatter_class=fmt)
    _add_common(t, TEACHER_PRESETS)
    add_config_args(t.add_argument_group("training config (TeacherTrainConfig)"), TeacherTrainConfig)
    t.set_defaults(func=cmd_pretrain, stage="teacher")

    f = psub.add_parser("figure", help="draw input / masked / reconstruction per view (Fig. 5) as a PNG",
                        description="Reconstruct the first molecules of the shards with a trained ImageED and "
                                    "write rows of [input | masked | reconstruction] for RGB and D, per view.")
    f.add_argument("--model", required=True, help="imageed.pt, a checkpoint, or an ImageED run folder")
    f.add_argument("--shards", required=True, help="shards with edimg")
    f.add_argument("--out", required=True, help="output .png")
    f.add_argument("--molecules", type=int, default=2, help="how many molecules to draw (default: 2)")
    f.add_argument("--seed", type=int, default=0, help="mask seed (default: 0)")
    f.set_defaults(func=cmd_figure)


def config_section(args) -> tuple[Path, str | None, dict]:
    """``(path, section, values)`` of ``--config``: a pipeline config (checked whole; its section of this stage) or,
    with ``--config-section`` or keys that are not pipeline sections, that section of the file or the whole file."""
    from edg.cluster.pipeline import PipelineConfig, load_pipeline_config
    from edg.edg_core.config import read_yaml
    path = Path(args.config)
    given = read_yaml(path)
    section = args.config_section
    if section is None and given and set(given) <= set(PipelineConfig.__dataclass_fields__):
        load_pipeline_config(path)  # a pipeline config: every section typed before any work
        section = args.stage
    return path, section, (given.get(section) or {}) if section else given


def resolve_config(args):
    """Paper defaults <- --preset (model sizes) <- YAML file (--config) <- command-line flags.

    ``--config`` is a pipeline config as for every other command (checked whole; its ``imageed:`` or
    ``teacher:`` section is used), or, with ``--config-section`` or keys that are not pipeline sections, a file
    holding this stage's config."""
    from edg.train.configs import TEACHER_PRESETS, ImageEDTrainConfig, TeacherTrainConfig, imageed_preset
    cls = ImageEDTrainConfig if args.stage == "imageed" else TeacherTrainConfig
    cfg = cls()
    if args.preset:
        model = imageed_preset(args.preset) if args.stage == "imageed" else TEACHER_PRESETS[args.preset]
        cfg = replace(cfg, model=model)
    if args.config:
        path, section, given = config_section(args)
        data = asdict(cfg)
        for k, v in given.items():  # unknown keys are reported by from_dict, naming the file
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k].update(v)
            else:
                data[k] = v
        cfg = from_dict(cls, data, where=f"{path}" + (f": {section}" if section else ""))
    return apply_args(cfg, args)


MODEL_SHAPES = ("img_size", "patch_size", "n_views", "fu_dim")


def explicit_model_fields(args) -> frozenset[str]:
    """The model shape fields the user set (a --model.* flag or the ``model`` part of the config section that
    ``resolve_config`` read)."""
    given = {k for k in MODEL_SHAPES if getattr(args, f"model__{k}", None) is not None}
    if args.config:
        model = config_section(args)[2].get("model")
        given |= {k for k in MODEL_SHAPES if isinstance(model, dict) and k in model}
    return frozenset(given)


def cmd_pretrain(args) -> int:
    from edg.edg_core.run_folder import RunFolder
    from edg.train.loops.pretrain import UNITS, fit_to_shards
    cfg = resolve_config(args)
    cfg, changes = fit_to_shards(args.stage, cfg, args.shards, explicit_model_fields(args))
    if changes:
        print(f"{args.stage}: adapted to the shards' images: {', '.join(changes)} "
              f"(set the --model.* flags to choose yourself)", flush=True)
    # the run folder: refusals and the single-writer lease before any work; a URL --out gets a synced local
    # working copy under $EDG_CACHE/staging (a rerun resumes from the URL)
    with RunFolder.open(args.out, overwrite=args.overwrite, temporary=False, command=f"edg pretrain {args.stage}"
                        ) as run:
        return _pretrain(args, cfg, run, UNITS)


def _pretrain(args, cfg, run, UNITS) -> int:
    store = run.mirror
    store.pull()
    out = run.local
    with store.autosync(60.0):
        if args.ray:
            from edg.cluster.runtime import ray_session
            from edg.cluster.train_ray import train_on_ray
            with ray_session(args.ray_address):
                metrics = train_on_ray(args.stage, cfg, args.shards, out, store, num_workers=args.ray_workers,
                                       use_gpu=args.use_gpu, max_failures=args.max_failures)
        else:
            from edg.train.loops.pretrain import train_imageed, train_teacher
            train = train_imageed if args.stage == "imageed" else train_teacher
            metrics = train(cfg, args.shards, out, device=args.device)
    print(json.dumps(metrics, indent=2))
    units = UNITS[args.stage]
    losses = ", ".join(f"{k.replace('_', ' ', 1)} {metrics[k]:.4g} {units['loss']}"
                       for k in ("train_loss", "valid_loss") if k in metrics)
    print(f"{args.stage} pretraining done: epoch {metrics.get('epoch', 0)}/{cfg.epochs}, {losses}, "
          f"{metrics.get('samples_per_s', float('nan')):.1f} samples/s -> {run.url}"
          + (f" (working copy {out})" if run.remote else ""))
    return 0


def cmd_figure(args) -> int:
    import torch
    from edg.train.data.shards import ShardImages, image_loader
    from edg.train.io.figures import save_reconstruction_png
    from edg.train.io.model_files import load_imageed
    model = load_imageed(args.model)
    ds = ShardImages(args.shards, "imageed", img_size=model.cfg.img_size, n_views=model.cfg.n_views, split="all")
    batch = next(iter(image_loader(ds, args.molecules)), None)
    if batch is None:
        from edg.edg_core.errors import ShardError
        raise ShardError(f"{args.shards}: no sample with ED images (edimg)")
    with torch.no_grad():
        save_reconstruction_png(model, batch["edimg"], args.out, seed=args.seed, max_molecules=args.molecules)
    print(f"molecules {batch['key']} -> {args.out}")
    return 0
