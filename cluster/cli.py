"""The ``edg`` command line. Each stage adds its sub-command from a module in ``cluster/commands/``
(a ``register(subparsers)`` function); ``edg --help`` lists those that have landed."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import warnings

from edg.edg_core.errors import EDGError

DESCRIPTION = """\
EDG: electron-density-enhanced molecular geometry learning.

Pipeline: conformations -> DFT (ED, ESP) -> rendered ED / structure images -> WebDataset shards
-> ImageED pretraining -> ED-aware teacher -> distillation into geometry students -> result tables.

One spec grammar for --input (which records) and --dataset (which task): <name>[:<subset>][?key=value&...]
  embedded[:qm9|:rmd17]     qm9[:<target>][?split=train|valid|test|all]
  rmd17:<molecule>[?split=train|valid|test]     smiles:CCO,c1ccccc1     a .xyz/.extxyz/.sdf/.mol/.smi file
  (- = standard input; a file takes ?format=xyz|sdf|smi and ?charge=N&multiplicity=M for records without them)
Options: split, root=DIR (?root=embedded: the data shipped in the package), limit=N (first N records),
rmd17 split_id=K; a --dataset spec also takes task options (rmd17:aspirin?train_size=100).
`edg data datasets` lists every registered dataset.
rMD17 data: `edg fetch rmd17 --out DIR`, then ?root=DIR or EDG_RMD17_ROOT=DIR. The old rmd17:aspirin:train
spelling still reads (with a note).
"""


def build_parser() -> argparse.ArgumentParser:
    import edg.cluster.commands as commands
    parser = argparse.ArgumentParser(prog="edg", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"edg.cluster.commands.{info.name}").register(sub)
    return parser


def _check_locations(args) -> None:
    """Every command's ``--out`` must outlive the process (no ``memory://``); ``--out``, ``--shards`` and
    ``--fields`` may be ``file://`` URLs (local paths) and must name a known protocol (``edg_core.storage``)."""
    from edg.edg_core.storage import check_location, check_writable

    from .runtime import check_job_output
    for name, persistent in (("out", True), ("shards", False), ("fields", False)):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, check_location(check_job_output(value, f"--{name}"), persistent=persistent))
    check_writable(getattr(args, "out", None) if isinstance(getattr(args, "out", None), str) else None)


def results_line(args) -> str | None:
    """``edg <command>: results in <absolute path or URL>`` for a command with an ``--out``, else None."""
    out = getattr(args, "out", None)
    if not isinstance(out, str) or not out or getattr(args, "print_config", False):
        return None
    where = out if "://" in out else os.path.abspath(out)
    return f"edg {args.command}: results in {where}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # torch-geometric scripts a few helpers when imported, which torch 2.10+ calls deprecated: nothing a user of
    # the command can act on (a library using EDG keeps its own warning filters)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    try:
        _check_locations(args)
        rc = int(args.func(args) or 0)
        if rc == 0 and (line := results_line(args)):
            print(line, flush=True)
        return rc
    except EDGError as e:
        print(f"edg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileNotFoundError) as e:
        # the file system refused a path (read-only, a file where a folder must be): one line, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"edg {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edg {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
