"""``edg fetch rmd17``: download a public data set, verify its checksum and contents, unpack it safely."""
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

Examples:
  edg fetch rmd17 --out data/rmd17
  edg fetch rmd17 --out data/rmd17 --md5 MD5_SHOWN_BY_FIGSHARE --keep-archive
"""


def register(sub) -> None:
    from edg.edg_core.readers.rmd17 import OFFICIAL_URL
    p = sub.add_parser("fetch", help="download a public data set (rmd17), verify and unpack it",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["rmd17"], help="data set to fetch")
    p.add_argument("--out", required=True, help="folder to unpack into (then EDG_RMD17_ROOT=OUT)")
    p.add_argument("--url", default=OFFICIAL_URL, help=f"archive URL (default: {OFFICIAL_URL})")
    p.add_argument("--sha256", help="expected sha256 of the archive")
    p.add_argument("--md5", help="expected md5 of the archive")
    p.add_argument("--molecules", nargs="+", metavar="NAME",
                   help="molecules whose npz files the archive must hold (default: all ten)")
    p.add_argument("--keep-archive", action="store_true", help="keep rmd17.tar.bz2 after unpacking")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(args) -> int:
    from edg.edg_core.readers.rmd17 import MOLECULES, fetch_rmd17
    root, digests = fetch_rmd17(args.out, url=args.url, sha256=args.sha256, md5=args.md5,
                                molecules=args.molecules or MOLECULES, keep_archive=args.keep_archive)
    checked = "verified" if (args.sha256 or args.md5) else "not checked (no --sha256/--md5 given)"
    print(f"rMD17 archive: {digests['size']} bytes, sha256 {digests['sha256']}, md5 {digests['md5']} ({checked})")
    print(f"rMD17 ready under {root}; use it with: export EDG_RMD17_ROOT={root}  (or ?root={root})")
    return 0
