"""QM9 from the PyPI package ``qm9pack`` (CSV tables of all 130,831 characterised molecules).

Raw targets come in the units of the QM9 release; ``geom3d_targets`` applies the Geom3D protocol
(docs/shards.md): subtract per-atom reference values (QM9 atomref table, B3LYP/6-31G(2df,p); figshare file
3195395) from U0, U, H, G (Hartree) and Cv (2.981 cal/mol/K per atom), then convert homo, lumo, gap,
zpve, U0, U, H, G from Hartree to eV. The split ``customized_01`` is Geom3D's: ``np.random.seed(42)``,
a permutation of all molecules in gdb order, 110,000 train / 10,000 validation / the rest test.

The CSV tables are parsed once (about a minute) into a cache file (``$EDG_CACHE`` or ~/.cache/edg).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataSourceError
from ..io import atomic_path, progress
from ..molecule import Molecule
from ..storage import cache_root
from ..units import HARTREE_IN_EV, symbol_to_z

N_MOLECULES = 130_831
TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")
_CSV_COLUMNS = ("Dipole_debye", "Polarizability_bohr3", "HOMO_au", "LUMO_au", "HOMO_LUMO_gap_au", "R2_bohr2",
                "ZPVE_au", "InternalEnergy_0K_au", "InternalEnergy_298K_au", "Enthalphy_298K_au",
                "GibbsFreeEnergy_298K_au", "Heatcapacity_Cv_cal_mol_K")
RAW_UNITS = dict(zip(TARGETS, ("D", "bohr^3", "Ha", "Ha", "Ha", "bohr^2", "Ha", "Ha", "Ha", "Ha", "Ha",
                               "cal/mol/K")))
GEOM3D_UNITS = dict(zip(TARGETS, ("D", "bohr^3", "eV", "eV", "eV", "bohr^2", "eV", "eV", "eV", "eV", "eV",
                                  "cal/mol/K")))
# QM9 atomref (figshare 3195395), Hartree, columns U0, U, H, G.
ATOMREF = {1: (-0.500273, -0.498857, -0.497912, -0.510927),
           6: (-37.846772, -37.845355, -37.844411, -37.861317),
           7: (-54.583861, -54.582445, -54.581501, -54.598897),
           8: (-75.064579, -75.063163, -75.062219, -75.079532),
           9: (-99.718730, -99.717314, -99.716370, -99.733544)}
CV_ATOMREF = 2.981  # cal/mol/K per atom, every element
_EV_TARGETS = ("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G")
SPLIT_SIZES = {"train": 110_000, "valid": 10_000}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
CACHE_VERSION = 1


@dataclass
class QM9Table:
    """All of QM9 as flat arrays: atoms of molecule i are ``z[offsets[i]:offsets[i+1]]``."""
    gdb_id: np.ndarray    # (M,) int64, 1-based QM9 index
    z: np.ndarray         # (A,) int64
    pos: np.ndarray       # (A, 3) float64, Å
    offsets: np.ndarray   # (M + 1,) int64
    targets: np.ndarray   # (M, 12) float64, raw QM9 units (RAW_UNITS)
    smiles: np.ndarray    # (M,) str

    def __len__(self) -> int:
        return int(self.gdb_id.shape[0])

    def molecule(self, i: int, geom3d: bool = True) -> Molecule:
        a, b = self.offsets[i], self.offsets[i + 1]
        z = self.z[a:b]
        t = geom3d_targets(self.targets[i:i + 1], [z])[0] if geom3d else self.targets[i]
        return Molecule(z=z, pos=self.pos[a:b], id=f"qm9:{int(self.gdb_id[i])}", smiles=str(self.smiles[i]),
                        labels=dict(zip(TARGETS, map(float, t))), charge=0, multiplicity=1)  # QM9: neutral singlets

    def molecules(self, indices=None, geom3d: bool = True):
        for i in (range(len(self)) if indices is None else indices):
            yield self.molecule(int(i), geom3d)


def geom3d_targets(raw: np.ndarray, zs: list[np.ndarray]) -> np.ndarray:
    """Raw QM9 targets (M, 12) -> Geom3D targets: atom-reference subtraction, then Hartree -> eV."""
    out = np.array(raw, dtype=np.float64, copy=True)
    col = {t: i for i, t in enumerate(TARGETS)}
    for m, z in enumerate(zs):
        try:
            ref = np.sum([ATOMREF[int(a)] for a in z], axis=0)
        except KeyError as e:
            raise DataSourceError(f"QM9 molecule {m}: no atom reference for element Z={e.args[0]}") from None
        for j, name in enumerate(("U0", "U", "H", "G")):
            out[m, col[name]] -= ref[j]
        out[m, col["Cv"]] -= CV_ATOMREF * len(z)
    for name in _EV_TARGETS:
        out[:, col[name]] *= HARTREE_IN_EV
    return out


def qm9pack_data_dir() -> Path:
    """The folder of qm9pack's CSV tables (found without importing qm9pack, which pulls pandas in)."""
    import importlib.util
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError("QM9 needs the PyPI package qm9pack: pip install 'edg[qm9]' (or pip install qm9pack)")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    for name in ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"):
        if not (d / name).exists():
            raise DataSourceError(f"qm9pack is installed but {d / name} is missing")
    return d


def _parse_csv(data_dir: Path) -> QM9Table:
    rows = []
    for name in ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"):
        with open(data_dir / name, newline="") as f:
            rows.extend(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["Index"]))
    gdb, zs, ps, tg, smi = [], [], [], [], []
    for r in progress(rows, "parse QM9", total=len(rows)):
        rec = f"qm9:{r['Index']} ({r['XYZ_file']})"
        syms = re.findall(r"[A-Z][a-z]?", r["Elements"])
        xyz = np.array([float(x) for x in _NUMBER.findall(r["XYZ_Ang"])], dtype=np.float64)
        if xyz.size != 3 * len(syms) or len(syms) != int(r["N_atoms"]):
            raise DataSourceError(f"{rec}: {len(syms)} elements, N_atoms={r['N_atoms']}, {xyz.size} coordinates")
        gdb.append(int(r["Index"]))
        zs.append(np.array([symbol_to_z(s) for s in syms], dtype=np.int64))
        ps.append(xyz.reshape(-1, 3))
        tg.append([float(r[c]) for c in _CSV_COLUMNS])
        smi.append(r["SMILES"])
    offsets = np.concatenate([[0], np.cumsum([len(z) for z in zs])]).astype(np.int64)
    return QM9Table(np.array(gdb, dtype=np.int64), np.concatenate(zs), np.concatenate(ps), offsets,
                    np.array(tg, dtype=np.float64), np.array(smi))


def load_qm9(data_dir: str | Path | None = None, cache: bool = True) -> QM9Table:
    """All 130,831 QM9 molecules in gdb order (raw targets; see ``geom3d_targets``)."""
    data_dir = Path(data_dir) if data_dir else qm9pack_data_dir()
    if not data_dir.exists():
        raise DataSourceError(f"QM9 data folder {data_dir} does not exist")
    stamp = sum((data_dir / f"qm9_part{i}.csv").stat().st_size for i in (1, 2, 3))
    path = cache_root() / f"qm9_v{CACHE_VERSION}_{stamp}.npz"
    if cache and path.exists():
        d = np.load(path, allow_pickle=False)
        return QM9Table(d["gdb_id"], d["z"], d["pos"], d["offsets"], d["targets"], d["smiles"])
    table = _parse_csv(data_dir)
    if len(table) != N_MOLECULES:
        raise DataSourceError(f"{data_dir}: expected {N_MOLECULES} QM9 molecules, found {len(table)}")
    if cache:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, gdb_id=table.gdb_id, z=table.z, pos=table.pos, offsets=table.offsets,
                         targets=table.targets, smiles=table.smiles.astype("U"))
    return table


def split_customized_01(n: int = N_MOLECULES, seed: int = 42) -> dict[str, np.ndarray]:
    """Geom3D's split: positions (0-based, into the gdb-ordered table) of train / valid / test."""
    rng_state = np.random.get_state()
    try:
        np.random.seed(seed)
        perm = np.random.permutation(n)
    finally:
        np.random.set_state(rng_state)
    a, b = SPLIT_SIZES["train"], SPLIT_SIZES["train"] + SPLIT_SIZES["valid"]
    return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}


def load_qm9_embedded() -> QM9Table:
    """The 40 QM9 molecules shipped inside the package as a ``QM9Table`` (raw targets recovered from the
    Geom3D values the file holds). For demos and tests only."""
    from .sources import embedded_path
    from .xyz import read_xyz
    mols = list(read_xyz(embedded_path("qm9")))
    zs = [m.z for m in mols]
    geom3d = np.array([[m.labels[t] for t in TARGETS] for m in mols], dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum([len(z) for z in zs])]).astype(np.int64)
    return QM9Table(np.array([int(m.id.split(":")[1]) for m in mols], dtype=np.int64), np.concatenate(zs),
                    np.concatenate([m.pos for m in mols]), offsets, raw_targets(geom3d, zs),
                    np.array([m.smiles or "" for m in mols]))


def raw_targets(geom3d: np.ndarray, zs: list[np.ndarray]) -> np.ndarray:
    """The inverse of ``geom3d_targets``: Geom3D targets (M, 12) -> raw QM9 units."""
    out = np.array(geom3d, dtype=np.float64, copy=True)
    col = {t: i for i, t in enumerate(TARGETS)}
    for name in _EV_TARGETS:
        out[:, col[name]] /= HARTREE_IN_EV
    for m, z in enumerate(zs):
        ref = np.sum([ATOMREF[int(a)] for a in z], axis=0)
        for j, name in enumerate(("U0", "U", "H", "G")):
            out[m, col[name]] += ref[j]
        out[m, col["Cv"]] += CV_ATOMREF * len(z)
    return out


def qm9_table(root: str | None) -> QM9Table:
    """All of QM9 (``root``: a qm9pack data folder, default the installed package's), or the embedded 40
    molecules for ``root="embedded"``."""
    return load_qm9_embedded() if root == "embedded" else load_qm9(root)


def qm9_split(n: int, seed: int = 42) -> dict[str, np.ndarray]:
    """``split_customized_01`` for the full table; for a smaller one (the embedded molecules) the same
    permutation cut 2/3 train, 1/6 valid, the rest test."""
    if n == N_MOLECULES:
        return split_customized_01(n, seed)
    rng = np.random.RandomState(seed)
    perm = rng.permutation(n)
    a, b = (2 * n) // 3, (2 * n) // 3 + n // 6
    return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}


def open_qm9(spec):
    """``qm9[:<target>]?split=train|valid|test|all``: molecules with their 12 Geom3D targets as labels."""
    from .sources import Source
    split = spec.split
    table = qm9_table(spec.root)
    idx = None if split == "all" else qm9_split(len(table))[split]
    n = len(table) if idx is None else len(idx)

    def make():
        for m in table.molecules(idx):
            m.labels["split"] = split
            yield m
    return Source(str(spec), make, length=n, limit=spec.limit)


def split_members(spec) -> tuple[dict[str, np.ndarray], str]:
    """1-based QM9 gdb ids of each split of ``customized_01`` (seed 42)."""
    table = qm9_table(spec.root)
    parts = {k: table.gdb_id[v] for k, v in qm9_split(len(table)).items()}
    how = "customized_01 (seed 42)" if len(table) == N_MOLECULES else f"of the {len(table)} embedded molecules"
    return parts, f"QM9 split {how}; values are 1-based QM9 gdb ids"
