"""``edg fetch edbench --set <name>``: one EDBench benchmark set from Harvard Dataverse, verified and unpacked.

Every file of the set's dataset (``DOIS``) is streamed from Dataverse's file API into ``OUT/<set>/`` under its
Dataverse folder and name, verified against the checksum Dataverse lists, and archives among them are unpacked
in place (and removed unless ``keep_archives``). The set is ready when some folder under ``OUT/<set>`` holds
``raw/<set>.csv``: that folder is what ``edbench:DIR`` reads.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..dataverse import HARVARD, fetch_file, is_archive, list_files, unpack
from ..errors import DataSourceError

log = logging.getLogger(__name__)

DOIS = {
    "ed_energy_5w": "doi:10.7910/DVN/YAFDHG",
    "ed_homo_lumo_5w": "doi:10.7910/DVN/WVQMJP",
    "ed_multipole_moments_5w": "doi:10.7910/DVN/UHLZOE",
    "ed_open_shell_5w": "doi:10.7910/DVN/XFIK9H",
    "ed_retrieval_5w": "doi:10.7910/DVN/CCSJLC",
    "ed_prediction_5w": "doi:10.7910/DVN/SLYBD1",
}
"""EDBench set -> its Harvard Dataverse dataset (HongxinXiang/EDBench README)."""


def find_set(folder: Path, set_name: str, depth: int = 4) -> Path | None:
    """The folder under ``folder`` (itself included, ``depth`` levels down) that holds ``raw/<set>.csv``."""
    for d in range(depth + 1):
        hits = sorted(folder.glob("/".join(["*"] * d + ["raw", f"{set_name}.csv"])))
        if hits:
            return hits[0].parent.parent
    return None


def fetch_edbench(set_name: str, out: str | Path, server: str = HARVARD, doi: str | None = None,
                  keep_archives: bool = False, timeout: float = 60.0) -> tuple[Path, list[dict]]:
    """Download, verify and unpack ``set_name`` into ``out/<set_name>``; returns the set folder (for
    ``edbench:DIR``) and, per file, ``{path, bytes, checksum}``. Raises ``DataSourceError`` (unknown set,
    unreachable server, a file leading outside ``out``, no ``raw/<set>.csv`` after unpacking) or
    ``ChecksumError``."""
    if doi is None:
        if set_name not in DOIS:
            from ..config import unknown_name
            raise DataSourceError(str(unknown_name("EDBench set", set_name, list(DOIS))))
        doi = DOIS[set_name]
    root = Path(out) / set_name
    root.mkdir(parents=True, exist_ok=True)
    found = find_set(root, set_name)
    done_marker = root / ".edg_fetched"
    if found is not None and done_marker.exists():
        return found, []
    files = list_files(server, doi, timeout)
    if not files:
        raise DataSourceError(f"{doi} on {server} lists no files")
    report = []
    for f in files:
        path = fetch_file(server, f, root, timeout)
        report.append({"path": f.path, "bytes": path.stat().st_size,
                       "checksum": f"{f.checksum_type} {f.checksum}" if f.checksum else "none listed"})
        if is_archive(path):
            log.info("unpacking %s", path)
            unpack(path, path.parent)
            if not keep_archives:
                path.unlink()
    found = find_set(root, set_name)
    if found is None:
        raise DataSourceError(f"{root}: no raw/{set_name}.csv after fetching {len(files)} file(s) of {doi} "
                              f"({', '.join(f.path for f in files[:5])})")
    done_marker.write_text(doi + "\n")
    return found, report
