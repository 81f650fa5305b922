"""``make bench``: run every benchmark module in this folder (each defines ``main(argv)``) and print one
line per measurement. ``python -m bench NAME ...`` runs only the named modules. A module's ``main`` may return
an exit status (non-zero: some of its work failed); the highest is this command's."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
    chosen = [a for a in argv if not a.startswith("-")] or names
    rc = 0
    for name in chosen:
        if name not in names:
            print(f"unknown benchmark {name!r}; known: {names}", file=sys.stderr)
            return 2
        print(f"== bench {name}", flush=True)
        # a benchmark whose work failed returns non-zero (after printing why); the others still run
        rc = max(rc, importlib.import_module(f"bench.{name}").main([a for a in argv if a.startswith("-")]) or 0)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
