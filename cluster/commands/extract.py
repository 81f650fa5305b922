"""``edg extract``: run a pretrained model once over shards and store its per-molecule outputs."""
from __future__ import annotations

import argparse
import json

OUT_HELP = ("a folder: write a copy of the shards with the new members added (resumable: samples already in "
            "finished output shards are skipped); a path ending in .npz: arrays keyed by molecule id "
            "(`ids` plus one array per output)")


def register(sub) -> None:
    p = sub.add_parser("extract", help="write ImageED features (F_U) or teacher targets (F_S, EDP(F_S))",
                       description="Compute per-molecule vectors once so that later stages never run the "
                                   "model that made them.")
    esub = p.add_subparsers(dest="extract_command", metavar="<what>", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    i = esub.add_parser("imageed-features", help="F_U = mean ImageED encoder token over all views (fu.npy)",
                        formatter_class=fmt, description="""\
For every sample with ED images (edimg), run the ImageED encoder on all 6 views without masking and store
F_U, the mean of its output tokens (768 floats for ViT-B), as member fu.npy (or array `fu` in a .npz).
Samples without ED images are copied unchanged. The teacher is then trained on these shards.

Example:
  edg extract imageed-features --model runs/imageed --shards runs/qm9/shards --out runs/qm9/shards-fu
""")
    i.add_argument("--model", required=True, help="imageed.pt, a training checkpoint, or an ImageED run folder")
    _common(i)
    i.set_defaults(func=cmd_imageed)

    t = esub.add_parser("teacher-targets", help="F_S and EDP(F_S) per conformation (fs.npy, edp.npy)",
                        formatter_class=fmt, description="""\
For every sample with structure images (stimg), run the trained teacher in eval mode (no augmentation) and
store F_S (512 floats) and EDP(F_S) (768 floats) as members fs.npy and edp.npy (or arrays in a .npz).
Student training reads these and never runs the teacher. Use --drop-images to leave the images out of the
output shards (students need only atoms, labels and targets).

Example:
  edg extract teacher-targets --teacher runs/teacher/teacher.pt --shards runs/qm9/shards \\
      --out runs/qm9/targets --drop-images
""")
    t.add_argument("--teacher", required=True, help="teacher.pt or a teacher training checkpoint")
    _common(t)
    t.add_argument("--bf16", action="store_true", help="bf16 autocast on GPU (default: float32 targets)")
    t.set_defaults(func=cmd_teacher)


def _common(p):
    p.add_argument("--shards", required=True, help="input shard folder, glob or brace pattern")
    p.add_argument("--out", required=True, help=OUT_HELP)
    p.add_argument("--batch-size", type=int, default=64, help="molecules per forward pass (default: 64)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--drop-images", action="store_true", help="leave edimg/stimg out of output shards")
    from edg.cluster.stage_args import add_overwrite_arg, add_worker_args
    add_overwrite_arg(p)
    add_worker_args(p)


def _run(args, kind: str, model_path: str, **kw) -> int:
    from edg.cluster.stage_args import open_run, stage_workers
    from edg.cluster.stages import run_extract
    folder, file = str(args.out), None
    if folder.endswith(".npz"):  # one file: the folder holding it is the run folder
        folder, _, file = folder.rpartition("/") if "/" in folder else (".", "", folder)
        args.overwrite = True  # that folder may hold anything; only the .npz (and its failure list) is written
    with open_run(args, f"edg extract {kind}", folder or "/") as run, \
            stage_workers(args, f"edg extract {kind}") as workers:
        model = model_path
        if workers.actors == 0:  # load once here, so a bad checkpoint is named before any sample is read
            if kind == "imageed":
                from edg.train.io.model_files import load_imageed as load
            else:
                from edg.train.io.model_files import load_teacher as load
            model = load(model_path)
        s = run_extract(kind, model, args.shards, run, workers, batch_size=args.batch_size,
                        device=args.device, drop_images=args.drop_images, file=file, **kw)
    print(json.dumps(s.to_dict()))
    print(f"edg {s.line()} -> {args.out}")
    if s.failed:
        print(f"failure manifest: {s.failures}")
    return 0


def cmd_imageed(args) -> int:
    return _run(args, "imageed", args.model)


def cmd_teacher(args) -> int:
    return _run(args, "teacher", args.teacher, bf16=args.bf16)
