"""``edg fetch rmd17`` / ``edg fetch edbench --set <name>``: download a public data set, verify its checksums
and contents, unpack it safely."""
from __future__ import annotations

import argparse

HELP = """\
Download the official rMD17 archive (Christensen & von Lilienfeld 2020, figshare article 12672038,
CC0), verify it, unpack it without letting any member escape --out, and check that
every molecule's npz file and the split files are present and consistent. Then point EDG at the folder:

  export EDG_RMD17_ROOT=DIR          # or add ?root=DIR to a spec: rmd17:aspirin?split=train&root=DIR

--sha256 / --md5 check the archive (a mismatch deletes it and stops); without them the command prints the
archive's digests so you can compare them with the ones figshare shows. A rerun on a finished folder
returns at once.

EDBench: `edg fetch edbench --set ed_energy_5w --out DIR` streams every file of the set's Harvard Dataverse
dataset through Dataverse's file API, checks each against the checksum Dataverse lists, unpacks archives, and
prints the folder to read with `edbench:FOLDER` (e.g. `edg render --input edbench:FOLDER`).

Examples:
  edg fetch rmd17 --out data/rmd17
  edg fetch rmd17 --out data/rmd17 --md5 MD5_SHOWN_BY_FIGSHARE --keep-archive
  edg fetch edbench --set ed_energy_5w --out data/edbench
"""


def register(sub) -> None:
    from edg.edg_core.dataverse import HARVARD
    from edg.edg_core.readers.edbench_fetch import DOIS
    from edg.edg_core.readers.rmd17 import OFFICIAL_URL
    p = sub.add_parser("fetch", help="download a public data set (rmd17, edbench), verify and unpack it",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["rmd17", "edbench"], help="data set to fetch")
    p.add_argument("--out", required=True, help="folder to unpack into (rmd17: then EDG_RMD17_ROOT=OUT)")
    p.add_argument("--url", default=OFFICIAL_URL, help=f"rmd17 archive URL (default: {OFFICIAL_URL})")
    p.add_argument("--set", dest="edbench_set", choices=list(DOIS), help="edbench: the benchmark set")
    p.add_argument("--server", default=HARVARD, help=f"edbench: Dataverse server (default: {HARVARD})")
    p.add_argument("--sha256", help="expected sha256 of the archive")
    p.add_argument("--md5", help="expected md5 of the archive")
    p.add_argument("--molecules", nargs="+", metavar="NAME",
                   help="molecules whose npz files the archive must hold (default: all ten)")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive(s) after unpacking")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(args) -> int:
    if args.dataset == "edbench":
        return fetch_edbench_command(args)
    from edg.edg_core.readers.rmd17 import MOLECULES, fetch_rmd17
    root, digests = fetch_rmd17(args.out, url=args.url, sha256=args.sha256, md5=args.md5,
                                molecules=args.molecules or MOLECULES, keep_archive=args.keep_archive)
    checked = "verified" if (args.sha256 or args.md5) else "not checked (no --sha256/--md5 given)"
    print(f"rMD17 archive: {digests['size']} bytes, sha256 {digests['sha256']}, md5 {digests['md5']} ({checked})")
    print(f"rMD17 ready under {root}; use it with: export EDG_RMD17_ROOT={root}  (or ?root={root})")
    return 0


def fetch_edbench_command(args) -> int:
    from edg.edg_core.errors import DataSourceError
    from edg.edg_core.readers.edbench_fetch import fetch_edbench
    if not args.edbench_set:
        raise DataSourceError("edg fetch edbench: name the set with --set (e.g. --set ed_energy_5w)")
    folder, files = fetch_edbench(args.edbench_set, args.out, server=args.server, keep_archives=args.keep_archive)
    for f in files:
        print(f"{f['path']}: {f['bytes']} bytes, {f['checksum']} verified" if f["checksum"] != "none listed"
              else f"{f['path']}: {f['bytes']} bytes, no checksum listed")
    print(f"EDBench {args.edbench_set} ready under {folder}; read it with: edbench:{folder}")
    return 0
