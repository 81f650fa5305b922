"""The built-in datasets. A new one is one ``register(Dataset(...))`` here, naming its reader (and task)."""
from __future__ import annotations

from ..readers.edbench import UNITS as EDBENCH_UNITS
from ..readers.pcqm4mv2 import LABEL as PCQM_LABEL
from ..readers.pcqm4mv2 import LABEL_UNIT as PCQM_UNIT
from ..readers.pcqm4mv2 import SPLITS as PCQM_SPLITS
from ..readers.qm9 import GEOM3D_UNITS
from ..readers.qm9 import TARGETS as QM9_TARGETS
from ..readers.rmd17 import MOLECULES as RMD17_MOLECULES
from .registry import Dataset, register

READERS = "edg.edg_core.readers"

register(Dataset(
    name="qm9", description="QM9 (qm9pack), Geom3D targets, split customized_01; ?root=embedded: 40 shipped "
                            "molecules", reader=f"{READERS}.qm9:open_qm9",
    subset="target", subset_label="QM9 target", subsets=QM9_TARGETS, task_needs_subset=True,
    splits=("train", "valid", "test", "all"), default_split="all", options=("root",),
    task="edg.train.tasks.qm9:QM9Task", targets=QM9_TARGETS, metrics=("mae",), units=dict(GEOM3D_UNITS),
    family="qm9", paper_table="Table 1: QM9", table_layout="targets",
    split_members=f"{READERS}.qm9:split_members"))

register(Dataset(
    name="rmd17", description="rMD17 energies and forces of one molecule (split id 1..5: 950/50/1000 frames); "
                              "?root=embedded: frames shipped in the package", reader=f"{READERS}.rmd17:open_rmd17",
    subset="molecule", subset_label="rMD17 molecule", subsets=RMD17_MOLECULES, subset_required=True,
    splits=("train", "valid", "test"), default_split="train", options=("root", "split_id"),
    task="edg.train.tasks.rmd17:RMD17Task", targets=("energy", "forces"),
    metrics=("energy_mae", "force_mae"), units={"energy": "kcal/mol", "forces": "kcal/mol/Å",
                                                "energy_mae": "kcal/mol", "force_mae": "kcal/mol/Å"},
    family="rmd17", paper_table="Table 2: rMD17", table_layout="rows", trajectory_ids=True,
    split_members=f"{READERS}.rmd17:split_members"))

register(Dataset(
    name="embedded", description="the small data set shipped inside the package (embedded:qm9, embedded:rmd17)",
    reader=f"{READERS}.sources:open_embedded", subset="part", subset_label="embedded part",
    subsets=("qm9", "rmd17"), units={"energy": "kcal/mol", "forces": "kcal/mol/Å"}))  # labels of the rmd17 part

register(Dataset(
    name="smiles", description="SMILES given inline, comma-separated (RDKit ETKDG + MMFF conformers)",
    reader=f"{READERS}.sources:open_smiles", subset="smiles", subset_label="SMILES list", subset_required=True))

register(Dataset(
    name="file", description="a .xyz/.extxyz, .sdf/.mol or .smi file (written as its path; - is standard input); "
                             "?format=xyz|sdf|smi when the suffix does not say, ?charge=N&multiplicity=M for "
                             "records that do not state them (plain XYZ, SMILES)",
    reader=f"{READERS}.sources:open_file", subset="path", subset_label="file path", subset_required=True,
    options=("format", "charge", "multiplicity")))

register(Dataset(
    name="edbench", description="an EDBench set folder (Mol1.sdf geometries, the set's labels, ED/ESP cubes for "
                                "edg render; ED5-EC labels are E1..E6): edbench:DIR?set=&split_by=scaffold|random",
    reader=f"{READERS}.edbench:open_edbench", subset="root", subset_label="EDBench set folder",
    subset_required=True, splits=("train", "valid", "test", "all"), default_split="all",
    options=("set", "split_by"), units=dict(EDBENCH_UNITS),
    fields="edg.render.cube_input:edbench_items"))

register(Dataset(
    name="pcqm4mv2", description="PCQM4Mv2's pcqm4m-v2-train.sdf (record i = molecule idx i, label homolumogap eV "
                                 "from data.csv.gz); ?part=k/N: one of N byte ranges; ?split= needs ?split_dict=",
    reader=f"{READERS}.pcqm4mv2:open_pcqm4mv2", subset="path", subset_label="pcqm4m-v2-train.sdf path",
    subset_required=True, splits=PCQM_SPLITS, default_split="all", options=("csv", "split_dict", "part"),
    units={PCQM_LABEL: PCQM_UNIT}, parts=f"{READERS}.pcqm4mv2:plan_parts"))
