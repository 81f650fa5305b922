"""``edg import``: the EDG authors' released models and features in this project's formats."""
from __future__ import annotations

import argparse
import json

HELP = """\
Convert the files the EDG authors released (github.com/HongxinXiang/EDG, README download links) so that the
rest of `edg` uses them: the 2 M-molecule teacher without running DFT or pretraining. Nothing in these
files is executed: torch files load as plain tensors, the .pkl through a plain-data unpickler.

  imageed           pretrained ImageED ViT-B/16 (MAE checkpoint)  -> imageed.pt  (edg extract imageed-features)
  teacher           ED-aware-Teacher.pth                          -> teacher.pt  (edg extract teacher-targets,
                                                                                  edg distill --ed-predictor)
  ed-features       200w_ED_feats.pkl (F_U of 2 M molecules)      -> fu .npz, or shards with fu.npy
                                                                     (edg pretrain teacher)
  teacher-features  teacher_features.npz (F_S per conformation)   -> teacher targets .npz
                                                                     (edg distill --teacher-targets)

Their ImageED reads the PNG alpha as the fourth channel: render its input with `--fourth-channel alpha`
(docs/pretrain.md, "The authors' assets").

Examples:
  edg import imageed --src ImageED_vit_base.pth --out runs/authors/imageed.pt
  edg import teacher --src ED-aware-Teacher.pth --out runs/authors/teacher.pt
  edg import teacher-features --src teacher_features.npz --out runs/authors/aspirin-targets.npz \\
      --rmd17-archive rmd17/npz_data/rmd17_aspirin.npz --teacher runs/authors/teacher.pt
  edg import ed-features --src 200w_ED_feats.pkl --shards runs/mols/shards --out runs/mols/shards-fu
"""


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("import", help="the EDG authors' released ImageED, teacher and features in our formats",
                       description=HELP, formatter_class=fmt)
    isub = p.add_subparsers(dest="import_command", metavar="<what>", required=True)

    i = isub.add_parser("imageed", help="their MAE-style ImageED checkpoint -> imageed.pt",
                        description="Their MaskedAutoencoderViT weights (any size; the class token and fixed "
                                    "sin-cos position embeddings are kept as theirs) -> our ImageED checkpoint.")
    i.add_argument("--src", required=True, help="their checkpoint (.pth with 'model', or a bare state dict)")
    i.add_argument("--out", required=True, help="our checkpoint to write (e.g. runs/authors/imageed.pt)")
    i.add_argument("--n-views", type=int, default=6, help="views per molecule (theirs: 6)")
    i.add_argument("--num-heads", type=int, default=None,
                   help="encoder heads (default: from the checkpoint's args.model, else embed_dim / 64)")
    i.add_argument("--decoder-num-heads", type=int, default=None, help="decoder heads (default: 16, theirs)")
    i.set_defaults(func=cmd_imageed)

    t = isub.add_parser("teacher", help="ED-aware-Teacher.pth -> teacher.pt",
                        description="Their {'ED_teacher', 'EDPredictor'} checkpoint -> our teacher checkpoint.")
    t.add_argument("--src", required=True, help="their ED-aware-Teacher.pth")
    t.add_argument("--out", required=True, help="our teacher.pt to write")
    t.add_argument("--arch", default="resnet18", help="timm backbone of their ED_teacher (theirs: resnet18)")
    t.add_argument("--img-size", type=int, default=224, help="structure image side it was trained on")
    t.set_defaults(func=cmd_teacher)

    for name, helptext, src_help in (
            ("ed-features", "200w_ED_feats.pkl -> F_U (.npz or shards with fu.npy)", "their 200w_ED_feats.pkl"),
            ("teacher-features", "teacher_features.npz -> teacher targets (.npz: ids, fs [, edp])",
             "their teacher_features.npz")):
        f = isub.add_parser(name, help=helptext, description=helptext)
        f.add_argument("--src", required=True, help=src_help)
        f.add_argument("--out", required=True, help="an .npz, or (ed-features with --shards) a shard folder")
        f.add_argument("--id-format", default="{}",
                       help="our molecule id for each of theirs, '{}' = their id (e.g. 'qm9:{}')")
        f.add_argument("--strip-prefix", default="", help="removed from their ids first (e.g. 'gdb_')")
        if name == "ed-features":
            f.add_argument("--shards", default=None,
                           help="shards whose samples get fu.npy where their molecule id has a feature")
            f.set_defaults(func=cmd_ed_features)
        else:
            f.add_argument("--teacher", default=None,
                           help="a teacher checkpoint (e.g. from `edg import teacher`): also store EDP(F_S)")
            f.add_argument("--rmd17-archive", default=None,
                           help="rMD17: their drug_id are rows of this rmd17_<molecule>.npz (the figshare archive); "
                                "our ids are its old_indices (MD17 frame numbers). Replaces --id-format")
            f.add_argument("--row-ids", default=None,
                           help="an input spec whose molecules, in order, name the rows (e.g. qm9?split=all "
                                "for their Geom3D QM9 file without drug_id). Replaces --id-format")
            f.set_defaults(func=cmd_teacher_features)


def _done(stats: dict) -> int:
    print(json.dumps(stats))
    return 0


def cmd_imageed(args) -> int:
    from edg.train.io.import_assets import import_imageed
    return _done(import_imageed(args.src, args.out, args.n_views, args.num_heads, args.decoder_num_heads))


def cmd_teacher(args) -> int:
    from edg.train.io.import_assets import import_teacher
    return _done(import_teacher(args.src, args.out, args.arch, args.img_size))


def cmd_ed_features(args) -> int:
    from edg.train.io.import_assets import import_ed_features
    return _done(import_ed_features(args.src, args.out, args.id_format, args.strip_prefix, args.shards))


def cmd_teacher_features(args) -> int:
    from edg.train.io.import_assets import import_teacher_features
    return _done(import_teacher_features(args.src, args.out, args.id_format, args.strip_prefix, args.teacher,
                                         args.rmd17_archive, args.row_ids))
