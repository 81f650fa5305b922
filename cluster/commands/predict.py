"""``edg predict``: energies and forces of a trained student for every molecule of an input, as extended XYZ."""
from __future__ import annotations

import argparse
import json

HELP = """\
Run a student trained by `edg distill` / `edg benchmark` on new conformations and write them with their
predicted energy and forces as extended XYZ (ASE, OVITO and EDG read it). Only the student's best weights are
used (torch.load weights_only); the EDG head is not needed at inference.

--model is a model file written by `edg export` (one file: no run folder or training code needed), the run
folder <out>/<run> (holding result.json and best_student.pt) or best_student.pt itself.
Every structure is checked against the model's training domain (the file's model card; for a run folder, its
training data when readable): one with an element never seen in training is refused (one line on stderr, a
record in <out>.failures.jsonl, no energy); an unseen composition or an energy or force far outside the
training range is written with domain=warn and domain_reasons="..." (a column of the extxyz), and a summary
line counts the structures outside the domain.
--input is any input spec (a .xyz/.extxyz/.sdf/.mol file, 'rmd17:ethanol?split=test&root=DIR', smiles:CCO, ...);
records that cannot be read go to <out>.failures.jsonl and the rest are predicted.
rMD17 students predict kcal/mol and kcal/mol/Å; --units eV (default, ASE's convention) converts them.
From Python: edg.api.EDGCalculator(model file or run folder) is an ASE calculator (MD, optimisation).

Example:
  edg distill --dataset 'rmd17:ethanol?root=embedded' --epochs 5 --out runs/distill
  edg predict --model runs/distill/schnet__rmd17-ethanol__lam0__seed42 \\
      --input 'rmd17:ethanol?split=test&root=embedded' --out ethanol_pred.extxyz
  edg export runs/distill/schnet__rmd17-ethanol__lam0__seed42 --out ethanol.pt2
  edg predict --model ethanol.pt2 --input molecules.xyz --out pred.extxyz
"""


def register(sub) -> None:
    p = sub.add_parser("predict", help="energies and forces of a trained student for an xyz/extxyz file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="model file of edg export, run folder of edg distill, or its best_student.pt")
    p.add_argument("--input", required=True, help="input spec or file (xyz/extxyz/sdf/mol/smi)")
    p.add_argument("--out", required=True, help="output .extxyz file")
    p.add_argument("--units", choices=["eV", "kcal/mol"], default="eV",
                   help="energy unit of the output (forces: unit/Å); default eV")
    p.add_argument("--batch-size", type=int, default=32, help="molecules per forward pass")
    p.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA when a GPU is visible, else CPU), cpu, cuda, cuda:1")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    import sys

    from edg.train.io.predict import predict_file
    s = predict_file(args.model, args.input, args.out, units=args.units, batch_size=args.batch_size,
                     device=args.device)
    for refusal in s["refusals"]:
        print(f"edg predict: {refusal}", file=sys.stderr)
    line = f"predicted {s['molecules']} molecules ({s['units']}) -> {s['out']}"
    if s["invalid"]:
        line += f"; {s['invalid']} invalid records -> {s['failures']}"
    if s["refused"]:
        line += f"; {s['refused']} refused -> {s['failures']}"
    print(line)
    if s.get("domain_line"):
        print(s["domain_line"])
    elif "domain" in s:
        print(f"all {sum(s['domain'].values())} structures inside the training domain")
    else:
        print(f"training domain not checked: {s['domain_unchecked']}")
    if "mae_vs_labels" in s:
        m = s["mae_vs_labels"]
        print(f"against the input's labels: energy MAE {m['energy_kcal_mol']:.4f} kcal/mol, "
              f"force MAE {m['forces_kcal_mol_A']:.4f} kcal/mol/Å")
    if args.verbose:
        print(json.dumps(s))
    return 0
