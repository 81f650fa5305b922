"""One entry to every conformation source: ``open_source(spec)``.

A spec names a registered dataset or a file, in the one spec grammar (``edg_core.spec``)::

    embedded[:qm9|:rmd17]                  the small data set shipped inside the package
    qm9[:<target>][?split=train|valid|test|all&root=DIR]
                                           QM9 from qm9pack, split customized_01 (root=embedded: 40 molecules)
    rmd17:<molecule>[?split=train|valid|test&root=DIR&split_id=K]
                                           rMD17 (root defaults to $EDG_RMD17_ROOT, ./data/rmd17,
                                           ../shared/data/rmd17; root=embedded: frames shipped in the package)
    smiles:CCO,c1ccccc1                    SMILES given inline (RDKit ETKDG + MMFF conformer)
    edbench:DIR[?split=..&split_by=scaffold|random&set=NAME]
                                           an EDBench set (Mol1.sdf + the set's named labels; cubes for rendering)
    pcqm4mv2:FILE[?part=k/N&csv=CSV&split=..&split_dict=FILE]
                                           pcqm4m-v2-train.sdf, record i = molecule idx i (homolumogap, eV)
    path/to/file.xyz|.extxyz|.sdf|.mol|.smi[?format=xyz|sdf|smi&charge=N&multiplicity=M]
                                           a file (- = standard input, a FIFO works too: read once, streamed);
                                           charge/multiplicity for the records that do not state them

Every spec takes ``?limit=N`` (first N records). An unknown dataset, option, split or an invalid value is one
``SpecError`` line naming the spec and the bad part. The old split-by-position spelling
(``rmd17:aspirin:train``, ``qm9:train``) still reads, with a one-line note.
A ``Source`` yields ``Molecule`` objects and, for records that cannot be read, ``InvalidRecord``
exceptions as values, so that a large job can log them in its failure manifest and go on; a file with no
records at all is one ``DataSourceError`` line ("no molecules").
"""
from __future__ import annotations

from .rdkit_io import read_sdf, read_smiles, smiles_to_molecule
from .rmd17 import MOLECULES as RMD17_MOLECULES
from .rmd17 import load_rmd17, rmd17_root
from .sources import EMBEDDED, Source, embedded_path
from .xyz import read_xyz

__all__ = ["Source", "open_source", "read_xyz", "read_sdf", "read_smiles", "smiles_to_molecule",
           "load_rmd17", "embedded_path", "rmd17_root", "RMD17_MOLECULES", "EMBEDDED"]


def open_source(spec) -> Source:
    """The records a spec (text or ``edg_core.spec.DatasetSpec``) selects, read by its dataset's reader."""
    from ..datasets import resolve
    spec = resolve(spec)
    return spec.dataset.open(spec)
