"""``edg export``: one self-contained model file of a trained student, with its model card."""
from __future__ import annotations

import argparse
import json

HELP = """\
Write a student trained by `edg distill` / `edg benchmark` as ONE model file that `edg predict --model FILE`,
the ASE calculator (edg.api.EDGCalculator(FILE)) and Python (edg.api.load_exported) use without the run folder
and without EDG's training code.

The file is a torch.export PT2 archive (a zip): the student's graph with a dynamic number of atoms (one program
per range of molecule sizes), its weights, and EDG's metadata: student, units (eV, eV/Å, Å), cutoff, the
training data spec, and a model card of the training domain (elements, compositions, energy and force ranges).
Predictions are checked against the card: an element never seen in training is refused, an unseen
composition or an energy or force far outside the training range is a warning.

The training data must be readable (the card is made from it). The written file is loaded back and compared
with the run's model on training structures before it is kept. Loading a model file runs nothing it carries
except the exported graph: every member is checked first (docs/export.md).

Example:
  edg distill --dataset 'rmd17:ethanol?root=embedded' --epochs 5 --out runs/distill
  edg export runs/distill/schnet__rmd17-ethanol__lam0__seed42 --out ethanol_schnet.pt2
  edg predict --model ethanol_schnet.pt2 --input molecules.xyz --out pred.extxyz
"""


def register(sub) -> None:
    p = sub.add_parser("export", help="write a trained student as one self-contained model file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder of edg distill (<out>/<run>), or its best_student.pt")
    p.add_argument("--out", required=True, help="model file to write (.pt2)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="precision of the exported model (float64 for MD and tight optimisation); default float32")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="largest molecule the file accepts (default 500)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from edg.train.io.exported import DEFAULT_MAX_ATOMS, ExportConfig, describe, export_run, load_exported
    cfg = ExportConfig(dtype=args.dtype, max_atoms=args.max_atoms or DEFAULT_MAX_ATOMS)
    path = export_run(args.run, args.out, cfg)
    model = load_exported(path)
    print(f"exported {describe(model)}")
    print(f"programs: {', '.join(f'{p.min_atoms}-{p.max_atoms} atoms' for p in model.programs)}; "
          f"{path.stat().st_size / 1e6:.2f} MB")
    if args.verbose:
        print(json.dumps(model.card.to_dict()))
    return 0
