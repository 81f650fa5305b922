"""PCQM4Mv2 in: the training SDF as a stream with stable indices, byte-range parts that together are the whole
file, labels from the CSV, the official split dict. Files are written here with RDKit."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from edg.edg_core.errors import DataSourceError, InvalidRecord
from edg.edg_core.readers import open_source
from edg.edg_core.readers.pcqm4mv2 import part_specs
from edg.edg_core.readers.sdf_parts import count_records, cut_at, sdf_part, sdf_parts
from edg.edg_core.spec import SpecError
from paperdata_fixtures import write_pcqm_sdf

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "N#CC", "O=C=O", "CCN(C)C", "C1CC1", "OCC(O)CO", "CC#C", "c1ccncc1",
          "FC(F)F", "CS(C)=O"]


@pytest.fixture(scope="module")
def pcqm(tmp_path_factory):
    d = tmp_path_factory.mktemp("pcqm")
    rd = write_pcqm_sdf(d / "pcqm4m-v2-train.sdf", SMILES)
    rows = ["idx,smiles,homolumogap"] + [f"{i},{s},{3.0 + 0.25 * i}" for i, s in enumerate(SMILES)]
    rows += [f"{len(SMILES) + j},C,{''}" for j in range(3)]  # valid/test molecules: no SDF record, no gap
    with gzip.open(d / "data.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    return d / "pcqm4m-v2-train.sdf", rd


def _records(sdf, n):
    return [(i, text) for part in sdf_parts(sdf, n) for i, _, text in part.records()]


def test_records_have_stable_indices_labels_and_geometry(pcqm):
    sdf, rd = pcqm
    mols = list(open_source(f"pcqm4mv2:{sdf}").molecules())
    assert [m.id for m in mols] == [f"pcqm4mv2:{i}" for i in range(len(SMILES))]
    for i, (m, r) in enumerate(zip(mols, rd)):
        assert m.smiles == SMILES[i] and m.labels == {"homolumogap": 3.0 + 0.25 * i}
        assert list(m.z) == [a.GetAtomicNum() for a in r.GetAtoms()]
        np.testing.assert_allclose(m.pos, r.GetConformer().GetPositions(), atol=1e-4)
    assert len(open_source(f"pcqm4mv2:{sdf}")) == len(SMILES)
    assert len(open_source(f"pcqm4mv2:{sdf}?limit=5")) == 5


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12, 40])
def test_parts_together_are_the_whole_file_with_its_indices(pcqm, n):
    sdf, _ = pcqm
    whole = _records(sdf, 1)
    assert [i for i, _ in whole] == list(range(len(SMILES)))
    parts = sdf_parts(sdf, n)
    assert len(parts) == n and parts[0].start == 0 and parts[-1].end == sdf.stat().st_size
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))
    assert _records(sdf, n) == whole
    for k, p in enumerate(parts):
        assert sdf_part(sdf, k, n) == p  # one actor finds its own part without cutting the others
        assert count_records(sdf, p.start, p.end) == len(list(p.records()))
    specs = part_specs(f"pcqm4mv2:{sdf}", n)
    assert specs[-1] == f"pcqm4mv2:{sdf}?part={n - 1}/{n}"
    ids = [m.id for spec in specs for m in open_source(spec).molecules()]
    assert ids == [f"pcqm4mv2:{i}" for i in range(len(SMILES))]
    assert sum(len(open_source(f"pcqm4mv2:{sdf}?part={k}/{n}")) for k in range(n)) == len(SMILES)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("last_newline", [True, False])
def test_cut_at_is_the_first_record_boundary_at_or_after_every_byte(tmp_path, newline, last_newline):
    body = newline.join([b"a", b"$$$$", b"bb", b"$$$$x", b"$$$$", b"$$$$", b"ccc", b"$$$$"])  # an empty record too
    data = body + (newline if last_newline else b"")
    path = tmp_path / "t.sdf"
    path.write_bytes(data)
    bounds, pos = {0, len(data)}, 0
    for line in data.splitlines(keepends=True):
        pos += len(line)
        if line.rstrip(b"\r\n") == b"$$$$":
            bounds.add(pos)
    for t in range(len(data) + 1):
        assert cut_at(path, t) == min(b for b in bounds if b >= t), t
    assert count_records(path) == 4
    texts = [r[2] for r in sdf_parts(path, 1)[0].records()]
    assert [t.strip() for t in texts] == [b"a", b"bb" + newline + b"$$$$x", b"", b"ccc"]
    for n in range(1, len(data) + 2):
        assert [r[:1] + r[2:] for p in sdf_parts(path, n) for r in p.records()] == \
               [r[:1] + r[2:] for r in sdf_parts(path, 1)[0].records()]


def test_a_garbled_record_is_named_and_later_records_keep_their_index(pcqm, tmp_path):
    sdf, _ = pcqm
    records = sdf.read_bytes().split(b"$$$$\n")
    lines = records[4].split(b"\n")
    lines[3] = b"  x  y  0  0  0  0  0  0  0  0999 V2000"  # counts line
    records[4] = b"\n".join(lines)
    bad = tmp_path / "pcqm4m-v2-train.sdf"
    bad.write_bytes(b"$$$$\n".join(records))
    (tmp_path / "data.csv.gz").write_bytes((sdf.parent / "data.csv.gz").read_bytes())
    recs = list(open_source(f"pcqm4mv2:{bad}"))
    assert isinstance(recs[4], InvalidRecord) and recs[4].record == "pcqm4mv2:4"
    assert "pcqm4m-v2-train.sdf, record 4 at byte" in str(recs[4]) and "\n" not in str(recs[4])
    assert [r.id for r in recs[5:]] == [f"pcqm4mv2:{i}" for i in range(5, len(SMILES))]
    assert recs[5].labels["homolumogap"] == 3.0 + 0.25 * 5


def test_split_dict_selects_records_and_its_absence_is_one_line(pcqm, tmp_path):
    import torch
    sdf, _ = pcqm
    torch.save({"train": torch.tensor([9, 1, 4]), "valid": torch.tensor([12, 13])}, tmp_path / "split_dict.pt")
    ids = [m.id for m in open_source(f"pcqm4mv2:{sdf}?split=train&split_dict={tmp_path}/split_dict.pt").molecules()]
    assert ids == ["pcqm4mv2:1", "pcqm4mv2:4", "pcqm4mv2:9"]
    assert len(open_source(f"pcqm4mv2:{sdf}?split=train&split_dict={tmp_path}/split_dict.pt&part=1/2")) + \
        len(open_source(f"pcqm4mv2:{sdf}?split=train&split_dict={tmp_path}/split_dict.pt&part=0/2")) == 3
    assert list(open_source(f"pcqm4mv2:{sdf}?split=valid&split_dict={tmp_path}/split_dict.pt")) == []
    with pytest.raises(DataSourceError, match=r"\?split=train needs the official split dict: add &split_dict=PATH"):
        open_source(f"pcqm4mv2:{sdf}?split=train")
    with pytest.raises(SpecError, match="part='3/2'"):
        open_source(f"pcqm4mv2:{sdf}?part=3/2")


def test_without_a_csv_records_carry_no_label(pcqm, tmp_path):
    sdf, _ = pcqm
    lone = tmp_path / "lone.sdf"
    lone.write_bytes(sdf.read_bytes())
    m = next(open_source(f"pcqm4mv2:{lone}").molecules())
    assert m.id == "pcqm4mv2:0" and "homolumogap" not in m.labels
    m = next(open_source(f"pcqm4mv2:{lone}?csv={sdf.parent}/data.csv.gz").molecules())
    assert m.labels == {"homolumogap": 3.0}
