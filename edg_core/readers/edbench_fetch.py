"""``edg fetch edbench --set <name>``: one EDBench benchmark set from Harvard Dataverse, verified and unpacked.

Every file of the set's dataset (``DOIS``) is streamed from Dataverse's file API into ``OUT/<set>/`` under its
Dataverse folder and name, verified against the checksum Dataverse lists, and archives among them are unpacked
in place (and removed unless ``keep_archives``). The set is ready when some folder under ``OUT/<set>`` holds
``raw/<set>.csv``: that folder is what ``edbench:DIR`` reads. The completion marker ``OUT/<set>.edg-fetched.json``
sits beside the set folder, where no downloaded archive can write; a rerun with it returns at once.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..dataverse import HARVARD, fetch_file, is_archive, list_files, unpack
from ..errors import DataSourceError
from ..io import write_json_atomic

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
MARKER_SUFFIX = ".edg-fetched.json"
"""``OUT/<set>.edg-fetched.json``: written once every file is verified and unpacked (DOI, server, files)."""


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
    marker = Path(out) / f"{set_name}{MARKER_SUFFIX}"  # beside the set folder: no archive can write it
    if found is not None and _marker_doi(marker) == doi:
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
    write_json_atomic(marker, {"doi": doi, "server": server, "files": report})
    return found, report


def _marker_doi(marker: Path) -> str | None:
    """The DOI a completion marker records; ``None`` when there is none. A marker EDG did not write (not a
    small JSON object with a ``doi``) is one ``DataSourceError`` line."""
    if not marker.exists() and not marker.is_symlink():
        return None
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 1 << 20:
            raise ValueError("not a small plain file")
        info = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("doi"), str):
            raise ValueError("no 'doi'")
    except (OSError, ValueError, RecursionError) as e:
        raise DataSourceError(f"{marker}: not a completion marker EDG wrote ({e}); delete it to fetch again") \
            from None
    return info["doi"]
