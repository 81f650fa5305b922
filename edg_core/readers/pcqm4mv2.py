"""PCQM4Mv2 (OGB-LSC): the official ``pcqm4m-v2-train.sdf`` conformers as a stream with stable indices.

Spec: ``pcqm4mv2:FILE[?split=..&csv=CSV&split_dict=FILE&part=k/N&limit=N]``. Record ``i`` is the ``i``-th
record of the SDF (0-based), id ``pcqm4mv2:<i>``; the SDF holds the 3,378,606 training molecules, record ``i``
being molecule ``idx = i`` of ``data.csv.gz`` (``idx,smiles,homolumogap``), whose SMILES and HOMO-LUMO gap (eV,
label ``homolumogap``) the record carries. The CSV is ``?csv=``, else ``data.csv.gz`` beside the SDF or
``pcqm4m-v2/raw/data.csv.gz`` under its folder; without one, records have no label (one logged line). The CSV
is read along with the SDF, one row at a time.

``?part=k/N`` reads only part ``k`` (0-based) of ``N`` byte ranges cut at record boundaries
(``sdf_parts``), so ``N`` actors each read their own part of one file and name records exactly as a whole-file
reader does. ``?split=train|valid|test-dev|test-challenge`` keeps the records whose index is in that split of
the official split dict (``split_dict.pt``, or ``.npz``/``.json`` with the same keys) given as ``?split_dict=``;
only the training molecules have conformers, so the other splits select no SDF record. A record RDKit cannot
read is one ``InvalidRecord`` naming the file, the index and the byte offset.

``plan_parts(spec, records_per_part)`` is what a stage driver uses to hand the parts to its actors
(``cluster.parts``): the parts found once by the driver (one byte scan for all of them), each a
``PlannedPart`` whose ``source()`` an actor reads without counting the records before it again.
"""
from __future__ import annotations

import csv
import gzip
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataSourceError, InvalidRecord
from ..molecule import Molecule
from .sdf_parts import SDFPart, count_records, sdf_part, sdf_parts

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test-dev", "test-challenge", "all")
ID_PREFIX = "pcqm4mv2:"
N_TRAIN = 3_378_606
LABEL, LABEL_UNIT = "homolumogap", "eV"


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"k/N"`` -> ``(k, N)`` with ``0 <= k < N``; ``None`` for no part."""
    from ..spec import SpecError
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = -1
    if not 0 <= k < n:
        raise SpecError(f"pcqm4mv2 option part={text!r}: write k/N with 0 <= k < N (part 0 of 4: part=0/4)")
    return k, n


def find_csv(sdf: Path, given: str | None) -> Path | None:
    """The labels CSV: ``given``, or ``data.csv.gz`` beside the SDF, or ``pcqm4m-v2/raw/data.csv.gz`` under
    its folder; ``None`` when none exists (``given`` missing is an error)."""
    if given is not None:
        if not Path(given).is_file():
            raise DataSourceError(f"pcqm4mv2: no CSV file {given}")
        return Path(given)
    for c in (sdf.parent / "data.csv.gz", sdf.parent / "pcqm4m-v2" / "raw" / "data.csv.gz",
              sdf.parent / "data.csv"):
        if c.is_file():
            return c
    return None


def load_split(path: str | Path, split: str) -> np.ndarray:
    """Sorted molecule indices of ``split`` from the official split dict (``torch.save`` of
    ``{split: tensor}``, read with ``weights_only=True``) or an ``.npz``/``.json`` with the same keys."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"pcqm4mv2: no split dict {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as d:
                parts = {k: d[k] for k in d.files}
        elif path.suffix == ".json":
            import json
            parts = json.loads(path.read_text())
        else:
            from ..safe_pickle import safe_torch_load  # the opcode pre-scan, then weights-only
            parts = safe_torch_load(path)
    except Exception as e:  # noqa: BLE001  (a damaged or foreign file: one line naming it)
        raise DataSourceError(f"pcqm4mv2: {path} is not a readable split dict ({type(e).__name__}: {e})") from None
    if split not in parts:
        raise DataSourceError(f"pcqm4mv2: split dict {path} has no {split!r} (has {', '.join(map(str, parts))})")
    return np.unique(np.asarray(parts[split], dtype=np.int64))


def _csv_rows(path: Path, start: int = 0) -> Iterator[tuple[int, str, float | None]]:
    """``(idx, smiles, gap or None)`` per CSV row, streamed; rows that do not parse are skipped. With ``start``
    (a part's first record index) the rows before it are passed over by counting line ends, no CSV parsing
    (measured 143k parsed rows/s on a loaded core, so the last part of the 3.7 M-row file would spend ~25 s
    getting there), when the row landed on has ``idx == start`` (PCQM4Mv2's idx is its row number); otherwise
    the CSV is read from the top."""
    if start > 0:
        rows = _parsed(_lines_after(path, start))
        first = next(rows, None)
        if first is not None and first[0] == start:
            yield first
            yield from rows
            return
        rows.close()
    yield from _parsed(_lines_after(path, 0))


def _lines_after(path: Path, skip: int) -> Iterator[str]:
    """The header line, then the lines after the first ``skip`` data lines (decoded as UTF-8, bad bytes
    replaced)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        yield f.readline().decode("utf-8-sig", "replace")
        buf, left = b"", skip
        while left > 0:
            chunk = f.read(1 << 20)
            if not chunk:
                return
            n = chunk.count(b"\n")
            if n < left:
                left -= n
                continue
            pos = -1
            for _ in range(left):
                pos = chunk.index(b"\n", pos + 1)
            buf, left = chunk[pos + 1:], 0
        rest = b""
        for chunk in itertools.chain([buf], iter(lambda: f.read(1 << 16), b"")):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace") + "\n"
        if rest:
            yield rest.decode("utf-8", "replace")


def _parsed(lines: Iterator[str]) -> Iterator[tuple[int, str, float | None]]:
    for row in csv.DictReader(lines):
        try:
            idx = int(row["idx"])
        except (KeyError, TypeError, ValueError):
            continue
        gap = row.get(LABEL)
        try:
            value = float(gap) if gap not in (None, "") else None
        except ValueError:
            value = None
        yield idx, row.get("smiles") or "", value if value is None or np.isfinite(value) else None


def record_id(index: int) -> str:
    """The molecule id of SDF record ``index``: ``pcqm4mv2:<index>`` (also its sample key)."""
    return f"{ID_PREFIX}{index}"


def record_index(key: str) -> int | None:
    """The SDF record index of an id or sample key ``pcqm4mv2:<index>``; ``None`` for anything else."""
    if not key.startswith(ID_PREFIX) or not key[len(ID_PREFIX):].isdigit():
        return None
    return int(key[len(ID_PREFIX):])


def _molecule(text: bytes, index: int, where: str) -> Molecule:
    from .rdkit_io import _rdkit, molecule_from_rdkit
    Chem, _ = _rdkit()
    rec = record_id(index)
    try:
        block = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRecord(rec, f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    mol = Chem.MolFromMolBlock(block, removeHs=False, sanitize=True)
    if mol is None:
        mol = Chem.MolFromMolBlock(block, removeHs=False, sanitize=False)
        if mol is not None:
            mol.UpdatePropertyCache(strict=False)
    if mol is None or mol.GetNumAtoms() == 0:
        raise InvalidRecord(rec, f"{where}: RDKit could not read the record")
    try:
        return molecule_from_rdkit(mol, rec)
    except InvalidRecord as e:
        raise InvalidRecord(rec, f"{where}: {e.problem}") from None


class PCQMSource:
    """The records one spec selects: a byte range of the SDF, the split's indices, the CSV's labels."""

    def __init__(self, sdf: str | Path, csv_path: str | None = None, split: str = "all",
                 split_dict: str | None = None, part: tuple[int, int] | SDFPart | None = None):
        self.sdf = Path(sdf)
        if not self.sdf.is_file():
            raise DataSourceError(f"pcqm4mv2: no SDF file {self.sdf} (pcqm4m-v2-train.sdf from OGB)")
        if split != "all" and split_dict is None:
            raise DataSourceError(f"pcqm4mv2 ?split={split} needs the official split dict: add "
                                  "&split_dict=PATH (pcqm4m-v2/split_dict.pt); without a split every record is read")
        self.keep = None if split == "all" else load_split(split_dict, split)
        if isinstance(part, SDFPart):  # found by a planner (plan_parts): no count from byte 0 again
            self.part = part
        else:
            self.part = sdf_part(self.sdf, *part) if part else SDFPart(str(self.sdf), 0, self.sdf.stat().st_size, 0)
        self.csv = find_csv(self.sdf, csv_path)

    def count(self) -> int:
        n = count_records(self.sdf, self.part.start, self.part.end)
        if self.keep is None:
            return n
        first = self.part.first_index
        return int(np.searchsorted(self.keep, first + n) - np.searchsorted(self.keep, first))

    def records(self) -> Iterator[Molecule | InvalidRecord]:
        rows = _csv_rows(self.csv, self.part.first_index) if self.csv is not None else None
        if rows is None:
            log.warning("pcqm4mv2: no data.csv.gz beside %s (give ?csv=): records carry no %s", self.sdf, LABEL)
        row = None
        for index, offset, text in self.part.records():
            if self.keep is not None:
                j = np.searchsorted(self.keep, index)
                if j == len(self.keep) or self.keep[j] != index:
                    continue
            where = f"{self.sdf.name}, record {index} at byte {offset}"
            try:
                mol = _molecule(text, index, where)
            except InvalidRecord as e:
                yield e
                continue
            while rows is not None and (row is None or row[0] < index):
                row = next(rows, None)
                if row is None:
                    rows = None
            if row is not None and row[0] == index:
                mol.smiles = row[1] or mol.smiles
                if row[2] is not None:
                    mol.labels[LABEL] = row[2]
            yield mol


def part_specs(spec, n_parts: int) -> list[str]:
    """The ``n_parts`` specs ``<spec>?part=k/N``, one per actor: together they read every record of ``spec``
    once, each from its own byte range."""
    from ..spec import parse_spec
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.name != "pcqm4mv2":
        raise ValueError(f"part_specs needs a pcqm4mv2: spec, not {str(spec)!r}")
    return [str(spec.replace(part=f"{k}/{n_parts}")) for k in range(n_parts)]


def open_pcqm4mv2(spec, sdf_part: SDFPart | None = None):
    """``pcqm4mv2:FILE[?split=..&csv=..&split_dict=..&part=k/N&limit=N]`` (see the module docstring).
    ``sdf_part``: the byte range of the spec's ``part=k/N`` when a planner found it already (``PlannedPart``)."""
    from .counted import CountedSource
    src = PCQMSource(spec.option("path"), spec.option("csv"), spec.split or "all", spec.option("split_dict"),
                     sdf_part or parse_part(spec.option("part")))
    return CountedSource(str(spec), src.records, limit=spec.limit, count=src.count)


@dataclass(frozen=True)
class PlannedPart:
    """Part ``k`` of ``N`` of a pcqm4mv2 spec as a planner found it: ``spec`` (``<spec>?part=k/N``, with the
    share of the spec's ``limit`` this part reads), its byte range and first record index (``sdf``), its SDF
    records ``[first, stop)`` and how many of them it selects (``count``: split and limit applied). Small and
    picklable: the driver hands it to an actor, which reads it with ``source()``."""
    spec: str
    sdf: SDFPart
    stop: int
    count: int

    @property
    def first(self) -> int:
        return self.sdf.first_index

    @staticmethod
    def index_of(key: str) -> int | None:
        """The record index of a sample key, to find the part that holds it (``record_index``)."""
        return record_index(key)

    def source(self):
        """The records of this part (a ``Source``), read from its byte range only."""
        from ..spec import parse_spec
        return open_pcqm4mv2(parse_spec(self.spec), self.sdf)


def plan_parts(spec, records_per_part: int, min_parts: int = 1) -> list[PlannedPart] | None:
    """The parts of ``spec`` for a stage's actors: ``N = max(min_parts, ceil(records / records_per_part))``
    byte ranges (at most one per record), cut once here (``sdf_parts``: one scan of the file), each with the
    records it selects (split and ``limit`` applied; parts that select none are left out). ``N`` depends on the
    file only, so a rerun cuts the same parts. ``None`` when ``spec`` names one part already (``?part=``)."""
    import math

    from ..spec import parse_spec
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.name != "pcqm4mv2":
        raise ValueError(f"plan_parts needs a pcqm4mv2: spec, not {str(spec)!r}")
    if spec.option("part") is not None:
        return None
    src = PCQMSource(spec.option("path"), spec.option("csv"), spec.split or "all", spec.option("split_dict"))
    n_records = count_records(src.sdf)
    n = min(max(min_parts, math.ceil(n_records / max(1, records_per_part))), max(1, n_records))
    planned, taken = [], 0
    cuts = sdf_parts(src.sdf, n)
    stops = [p.first_index for p in cuts[1:]] + [n_records]
    for k, (part, stop) in enumerate(zip(cuts, stops)):
        if src.keep is None:
            count = stop - part.first_index
        else:
            count = int(np.searchsorted(src.keep, stop) - np.searchsorted(src.keep, part.first_index))
        if spec.limit is not None:
            count = min(count, spec.limit - taken)  # the spec's first `limit` records, in file order
        if count <= 0:
            if spec.limit is not None and taken >= spec.limit:
                break
            continue
        options = {"part": f"{k}/{n}"} | ({"limit": str(count)} if spec.limit is not None else {})
        planned.append(PlannedPart(str(spec.replace(**options)), part, stop, count))
        taken += count
    return planned
