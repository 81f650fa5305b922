"""The bad-input table: one row per kind of bad input, each run through the real ``edg`` command line.

    .venv/bin/python scripts/bad_inputs.py                       # run every case, print the table
    .venv/bin/python scripts/bad_inputs.py --write docs/bad_inputs.md
    .venv/bin/python scripts/bad_inputs.py --only xyz-            # cases whose name starts with xyz-

Each case writes its own fixture (good records around the bad one) into a fresh folder, runs one ``edg`` command
(in this process through ``cluster.cli.main``, or in a child process where it needs a resource limit), and
checks three things: the exit code, the message (the failure-manifest reason, the error line, or the log line)
and how many good records reached the output. A row is green when all three are as expected;
``tests/test_bad_inputs.py`` runs every case.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WATER = "O 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n"
H2 = "H 0.0 0.0 0.0\nH 0.0 0.0 0.74\n"


def xyz(*frames: str) -> bytes:
    return "".join(frames).encode()


def frame(id_: str, atoms: str = WATER, extra: str = "", n: int | None = None) -> str:
    n = len(atoms.strip().splitlines()) if n is None else n
    return f"{n}\nid={id_} energy=-76.4{(' ' + extra) if extra else ''}\n{atoms}"


GOOD1, GOOD2, GOOD3 = frame("good-1"), frame("good-2"), frame("good-3")


@dataclass
class Case:
    """One bad-input class: its fixture files, the ``edg`` arguments (``{d}`` = the case's folder), and what
    must come out: exit ``code``, a ``message`` regex, ``kept`` good records (counted by ``count``)."""
    name: str
    what: str
    files: dict[str, bytes | Callable[[Path], None]]
    argv: list[str]
    code: int
    message: str
    kept: int | None
    count: str = "shards"          # shards | images | results | trained | info | fetched | none
    slow: bool = False             # marked slow in tests/test_bad_inputs.py (none is: every row takes seconds)
    env: dict = field(default_factory=dict)
    fsize_limit: int | None = None  # run in a child process with RLIMIT_FSIZE (a full disk)
    before: list[str] | None = None  # an earlier command (e.g. the run being resumed)
    between: Callable[[Path], None] | None = None  # damage done between ``before`` and ``argv``


def convert(fixture: str) -> list[str]:
    return ["data", "convert", "--input", f"{{d}}/{fixture}", "--out", "{d}/out"]


# ---------------------------------------------------------------- fixtures written by code
def _sdf(d: Path, bad: str) -> None:
    from rdkit import Chem
    from rdkit.Chem import AllChem
    blocks = []
    for name, smi in (("good-1", "O"), ("bad", "N"), ("good-2", "C")):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=42)
        m.SetProp("_Name", name)
        block = Chem.MolToMolBlock(m)
        props = "> <energy>\n-1.0\n\n"
        if name == "bad" and bad == "parse":
            lines = block.splitlines()
            lines[4] = "    0.0000    0.0000    0.0000 Xx  0  0"  # a garbled atom line
            block = "\n".join(lines) + "\n"
        if name == "bad" and bad == "nan":
            props = "> <energy>\nnan\n\n"
        blocks.append(block + props + "$$$$\n")
    data = "".join(blocks).encode()
    if bad == "utf8":
        data = data.replace(b"\nbad\n", b"\nbad\xe9\xff\n", 1)  # the name line of the middle record
    (d / "mols.sdf").write_bytes(data)


def _sdf_at_origin(d: Path) -> None:
    """Three water records; the middle one has every atom at the origin."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    blocks = []
    for name in ("good-1", "bad", "good-2"):
        m = Chem.AddHs(Chem.MolFromSmiles("O"))
        AllChem.EmbedMolecule(m, randomSeed=42)
        if name == "bad":
            for i in range(m.GetNumAtoms()):
                m.GetConformer().SetAtomPosition(i, (0.0, 0.0, 0.0))
        m.SetProp("_Name", name)
        blocks.append(Chem.MolToMolBlock(m) + "$$$$\n")
    (d / "mols.sdf").write_text("".join(blocks))


def _carbon_lattice(n: int, id_: str) -> str:
    """An XYZ frame of ``n`` carbon atoms 1.5 Å apart on a cube lattice (a molecule too large for the DFT)."""
    side = round(n ** (1 / 3)) + 1
    pts = [(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:n]
    return f"{n}\nid={id_}\n" + "".join(f"C {1.5 * i} {1.5 * j} {1.5 * k}\n" for i, j, k in pts)


def _zstd_zeros(size: int) -> bytes:
    """One zstd frame of ``size`` zero bytes that declares its size (a few KiB, made in 1 MiB pieces)."""
    import zstandard
    c = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    piece = bytes(1 << 20)
    return b"".join([c.compress(piece) for _ in range(size >> 20)] + [c.flush()])


def _shards(d: Path, damage: str) -> None:
    """Six samples with synthetic 32-px images, one of them damaged as ``damage`` says."""
    from edg.edg_core.readers import open_source
    from edg.edg_core.shards import ShardWriter, encode_sample
    from edg.train.data.shards import synthetic_images
    mols = list(open_source("embedded:qm9?limit=6").molecules())
    with ShardWriter(d / "shards", "synthetic", maxcount=100) as w:
        for i, m in enumerate(mols):
            ed, st = synthetic_images(m.z, m.pos, 16 if (damage == "shape" and i == 2) else 32)
            old = {"image_encoding": "u8z"} if damage == "bomb" else {}  # the u8z bomb replaces a u8z member
            s = encode_sample(m, edimg=ed, stimg=st, **old)
            if damage == "member" and i == 2:
                del s["z.npy"]
            if damage == "bomb" and i == 2:  # 6x4x32x32 announced, 16 MB inside
                s["edimg.u8z"] = struct.pack("<4I", 6, 4, 32, 32) + zlib.compress(b"\0" * (1 << 24))
            if damage == "zstd-bomb" and i == 2:  # 6x4x32x32 announced, a frame declaring 128 MiB inside
                s["edimg.u8zst"] = struct.pack("<4I", 6, 4, 32, 32) + _zstd_zeros(128 << 20)
            w.write(s)
    if damage == "header":
        shard = d / "shards" / "synthetic-000000.tar"
        with tarfile.open(shard) as t:
            off = next(m.offset for m in t.getmembers() if m.name.startswith(f"{mols[2].id}."))
        data = bytearray(shard.read_bytes())
        data[off:off + 20] = b"\xff" * 20
        shard.write_bytes(bytes(data))


def _lying_shards(d: Path, damage: str) -> None:
    """Six samples with synthetic 32-px images in one shard assembled header by header (as a hostile writer
    would), the third one (qm9:3) damaged as ``damage`` says; no key index, so readers scan the tar."""
    from edg.edg_core.readers import open_source
    from edg.edg_core.shards import encode_sample, npy_bytes
    from edg.train.data.shards import synthetic_images
    members, claimed = [], {}
    for i, m in enumerate(open_source("embedded:qm9?limit=6").molecules()):
        ed, st = synthetic_images(m.z, m.pos, 32)
        s = encode_sample(m, edimg=ed, stimg=st)
        key = s["__key__"]
        if i == 2:
            if damage == "not-object":
                s["meta.json"] = b"[1, 2, 3]"
            elif damage == "bad-json":
                s["meta.json"] = b'{"schema": 1, "id": '
            elif damage == "deep":
                s["meta.json"] = b"[" * 100_000 + b"]" * 100_000
            elif damage == "z-pos":
                s["pos.npy"] = npy_bytes(m.pos[:2])
            elif damage == "huge-size":
                claimed[f"{key}.meta.json"] = 10 * 10**9
            elif damage == "absolute":
                key = "/etc/qm9:3"
            elif damage == "dotdot":
                key = "../../qm9:3"
        names = sorted(k for k in s if not k.startswith("__"))
        members += [(f"{key}.{n}", s[n]) for n in names]
    if damage == "duplicate":  # the first sample again, after the others
        members += [(n, b) for n, b in members if n.startswith("qm9:1.")]
    blocks = []
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = claimed.get(name, len(data)), 0o444, 0
        blocks += [info.tobuf(tarfile.GNU_FORMAT), data, b"\0" * (-len(data) % 512)]
    (d / "shards").mkdir()
    (d / "shards" / "synthetic-000000.tar").write_bytes(b"".join(blocks) + b"\0" * 1024)


def _pickle(d: Path, kind: str) -> None:
    """Hostile pickles written opcode by opcode: a 59-byte ``bytearray(4 GiB)``, ``numpy.ndarray((2e5, 1e5))``."""
    def glob(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def long(n):
        raw = n.to_bytes(8, "little").rstrip(b"\0")
        return b"\x8a" + bytes([len(raw)]) + raw
    if kind == "bytearray":
        blob = b"\x80\x02" + glob("builtins", "bytearray") + long(4 << 30) + b"\x85R."
    else:
        blob = b"\x80\x02" + glob("numpy", "ndarray") + long(200_000) + long(100_000) + b"\x86\x85R."
    (d / "feats.pkl").write_bytes(blob)


def _refused_pth(d: Path) -> None:
    import datetime

    import torch
    torch.save({"ED_teacher": {"w": torch.zeros(2)}, "when": datetime.date(2020, 1, 1)}, d / "teacher.pth")


def _allocating_pth(d: Path) -> None:
    """A zip-format checkpoint whose pickle calls bytearray(1.5 GiB), which torch's weights-only loader allows."""
    import zipfile

    import torch
    torch.save({"w": torch.zeros(2)}, d / "teacher.pth")
    with zipfile.ZipFile(d / "teacher.pth") as z:
        records = {i.filename: z.read(i) for i in z.infolist()}
    size = (3 << 30) // 2
    call = b"cbuiltins\nbytearray\n\x8a\x04" + size.to_bytes(4, "little") + b"\x85R"
    with zipfile.ZipFile(d / "teacher.pth", "w", zipfile.ZIP_STORED) as z:
        for name, data in records.items():
            z.writestr(name, b"\x80\x02}X\x01\x00\x00\x00w" + call + b"s." if name.endswith("/data.pkl") else data)


def _archive(d: Path, kind: str) -> None:
    """An archive to ``edg fetch`` from a file:// URL (nothing reaches the network)."""
    members: list[tuple[str, bytes | None]] = [("rmd17/readme.txt", b"x" * 100)]
    if kind == "marker":
        forged = {"url": "x", "digests": {"sha256": "0" * 64, "md5": "0" * 32, "size": 1}}
        members.append((".edg-fetched.json", json.dumps(forged).encode()))
    elif kind == "file-then-folder":
        members += [("rmd17/npz_data", b"a file"), ("rmd17/npz_data/rmd17_ethanol.npz", b"x")]
    elif kind == "truncated":
        import random
        rng = random.Random(0)
        members += [(f"rmd17/f{i}.bin", rng.randbytes(400_000)) for i in range(4)]
    path = d / "archive.tar.bz2"
    with tarfile.open(path, "w:bz2") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    if kind == "truncated":  # cut inside the last bz2 block: the first files are whole
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.8)])


def _model_file(d: Path, kind: str) -> None:
    """A hostile model file for ``edg predict --model``, written member by member (a zip in the layout ``edg
    export`` writes, with the metadata's SHA-256 recomputed as an attacker would): ``pickle`` (not a zip: a pickle
    calling os.system), ``twice`` (a graph member that appears twice), ``pickled-weight`` (a weight torch would
    unpickle in full), ``target`` (a node calling torch.os.system), ``sympy`` (a size expression that is Python
    code), ``oversized`` (a weight declaring 10^12 elements with no bytes)."""
    import hashlib
    import zipfile
    os_system = b"cos\nsystem\n(Vtouch " + str(d / "ran").encode() + b"\ntR."
    if kind == "pickle":
        (d / "model.pt2").write_bytes(os_system)
        return
    tensor = {"dtype": 7, "sizes": [{"as_int": 4}], "strides": [{"as_int": 1}], "storage_offset": {"as_int": 0},
              "requires_grad": False, "device": {"type": "cpu", "index": None}, "layout": 7}
    weight = {"path_name": "weight_0", "is_param": True, "use_pickle": False, "tensor_meta": tensor}
    node = {"target": "torch.ops.aten.mul.Tensor", "inputs": [], "outputs": [], "metadata": {}}
    graph = {"graph_module": {"graph": {"nodes": [node], "sym_int_values": {}, "custom_obj_values": {}},
                              "signature": {"input_specs": []}}, "verifiers": ["TRAINING"], "guards_code": [],
             "range_constraints": {}}
    members = {"data/weights/weight_0": bytes(16)}
    if kind == "pickled-weight":
        weight["use_pickle"] = True
        members["data/weights/weight_0"] = os_system
    elif kind == "target":
        node["target"] = "torch.os.system"
    elif kind == "sympy":
        graph["graph_module"]["graph"]["sym_int_values"]["s0"] = {
            "as_expr": {"expr_str": "__import__('os').system('touch ran')", "hint": None}}
    elif kind == "oversized":
        tensor["sizes"] = [{"as_int": 1_000_000}, {"as_int": 1_000_000}]
        tensor["strides"] = [{"as_int": 1_000_000}, {"as_int": 1}]
        members["data/weights/weight_0"] = b""
    members["models/atoms2to25.json"] = json.dumps(graph).encode()
    members["data/weights/atoms2to25_weights_config.json"] = json.dumps({"config": {"w": weight}}).encode()
    members["data/constants/atoms2to25_constants_config.json"] = b'{"config": {}}'
    meta = {"format": "edg-model/1", "student": "schnet", "kind": "energy", "dtype": "float32", "cutoff": 5.0,
            "units": {"energy": "eV", "forces": "eV/\u00c5", "positions": "\u00c5"}, "run": {}, "card": {},
            "output": {"offset": 0.0, "scale": 1.0},
            "programs": [{"name": "atoms2to25", "min_atoms": 2, "max_atoms": 25}],
            "digests": {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}}
    members["extra/edg/model.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(d / "model.pt2", "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(f"archive/{name}", data)
        if kind == "twice":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile's "Duplicate name" is the point of this file
                z.writestr("archive/models/atoms2to25.json", b"{}")


def predict_model(kind: str) -> tuple[dict, list[str]]:
    """Files and ``edg predict`` arguments of a hostile model file (``_model_file``) and one good molecule."""
    return ({"model.pt2": lambda d: _model_file(d, kind), "in.xyz": xyz(GOOD1)},
            ["predict", "--model", "{d}/model.pt2", "--input", "{d}/in.xyz", "--out", "{d}/out.extxyz"])


def _marker(d: Path, content: bytes) -> None:
    (d / "data").mkdir()
    (d / "data" / ".edg-fetched.json").write_bytes(content)


def _alias_bomb(d: Path) -> None:
    """About 1 KB of YAML whose list-valued dft.esp_band expands to 9^9 strings through aliases."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (d / "bomb.yaml").write_text("dft:\n  esp_band: [" + ", ".join(items) + "]\n")


def _truncate_one_result(d: Path) -> None:
    from edg.dft.worker import result_files
    p = Path(sorted(result_files(d / "out"))[0])
    p.write_bytes(p.read_bytes()[:-100])


def info(folder: str = "shards") -> list[str]:
    return ["data", "info", f"{{d}}/{folder}", "--json"]


def fetch(*extra: str) -> list[str]:
    return ["fetch", "rmd17", "--url", "file://{d}/archive.tar.bz2", "--out", "{d}/data", *extra]


DFT = ["dft", "--local", "--basis", "sto-3g", "--grid-level", "0", "--conv-tol", "1e-7"]
PRETRAIN = ["pretrain", "imageed", "--shards", "{d}/shards", "--out", "{d}/run", "--preset", "tiny", "--epochs", "1",
            "--warmup-epochs", "0", "--num-workers", "0", "--batch-size", "2"]

CASES = [
    Case("xyz-count-too-big", "XYZ: atom count larger than the atom lines",
         {"a.xyz": xyz(GOOD1, frame("bad", n=5), GOOD2)},
         convert("a.xyz"), 0, r"a\.xyz, frame 1, line \d+: 5 atoms announced but only 3 atom lines follow", 2),
    Case("xyz-count-too-small", "XYZ: atom count smaller than the atom lines",
         {"a.xyz": xyz(GOOD1, frame("bad", n=2), GOOD2)}, convert("a.xyz"), 0,
         r"frame 1, line 10: after 2 atom lines expected the next frame's atom count", 2),
    Case("xyz-non-numeric", "XYZ: non-numeric coordinate",
         {"a.xyz": xyz(GOOD1, frame("bad", WATER.replace("0.757 -0.467", "0.757 abc", 1)), GOOD2)}, convert("a.xyz"),
         0, r"frame 1, line 9: 'abc' is not a number", 2),
    Case("xyz-missing-column", "XYZ: atom line with a missing column",
         {"a.xyz": xyz(GOOD1, frame("bad", WATER.replace("0.0 0.757 -0.467", "0.757 -0.467", 1)), GOOD2)},
         convert("a.xyz"), 0, r"line 9: atom line needs 4 columns \(symbol x y z\), got 3", 2),
    Case("xyz-bad-charge", "extXYZ: charge= not an integer",
         {"a.xyz": xyz(GOOD1, frame("bad", extra="charge=abc"), GOOD2)},
         convert("a.xyz"), 0, r"frame 1, line 7: charge='abc' is not an integer", 2),
    Case("xyz-bad-multiplicity", "extXYZ: multiplicity= not an integer",
         {"a.xyz": xyz(GOOD1, frame("bad", extra="multiplicity=1.5"), GOOD2)}, convert("a.xyz"), 0,
         r"multiplicity='1.5' is not an integer", 2),
    Case("xyz-impossible-multiplicity", "extXYZ: multiplicity impossible for the electron count",
         {"a.xyz": xyz(GOOD1, frame("bad", extra="multiplicity=2"), GOOD2)}, convert("a.xyz"), 0,
         r"multiplicity 2 impossible with 10 electrons", 2),
    Case("xyz-not-utf8", "XYZ: bytes that are not UTF-8",
         {"a.xyz": xyz(GOOD1) + b"3\nid=bad caf\xe9\n" + WATER.encode() + xyz(GOOD2)}, convert("a.xyz"), 0,
         r"frame 1, line 7: comment line is not UTF-8 text", 2),
    Case("xyz-nan-label", "extXYZ: NaN label",
         {"a.xyz": xyz(GOOD1, frame("bad").replace("energy=-76.4", "energy=nan"), GOOD2)},
         convert("a.xyz"), 0, r"label energy=nan is not finite", 2),
    Case("xyz-inf-coordinate", "XYZ: infinite coordinate",
         {"a.xyz": xyz(GOOD1, frame("bad", WATER.replace("0.117", "inf")), GOOD2)}, convert("a.xyz"), 0,
         r"line 8: non-finite value 'inf'", 2),
    Case("xyz-unknown-element", "XYZ: unknown element symbol",
         {"a.xyz": xyz(GOOD1, frame("bad", WATER.replace("O ", "Qq ")), GOOD2)}, convert("a.xyz"), 0,
         r"line 8: unknown element symbol 'Qq'", 2),
    Case("xyz-truncated", "XYZ: last frame cut short", {"a.xyz": xyz(GOOD1, GOOD2, "3\nid=bad\nO 0 0 0\n")},
         convert("a.xyz"), 0, r"truncated frame: 3 atoms announced but the file ends after 1 atom lines", 2),
    Case("xyz-junk-first", "XYZ: text before the first frame", {"a.xyz": xyz("garbage line\nmore\n", GOOD1, GOOD2)},
         convert("a.xyz"), 0, r"line 1: expected an atom count, got 'garbage line'", 2),
    Case("xyz-blank-in-frame", "XYZ: blank line inside a frame",
         {"a.xyz": xyz(GOOD1, frame("bad", WATER.replace("\nH 0.0 -0.757", "\n\nH 0.0 -0.757"), n=3), GOOD2)},
         convert("a.xyz"), 0, r"line 10: 3 atoms announced but only 2 atom lines follow \(line 10 is empty\)", 2),
    Case("extxyz-bad-comment", "extXYZ: comment line with an unbalanced quote",
         {"a.xyz": xyz(GOOD1, frame("bad", extra='smiles="CCO'), GOOD2)}, convert("a.xyz"), 0,
         r"frame 1, line 7: comment line cannot be parsed \(No closing quotation\)", 2),
    Case("extxyz-forces-missing", "extXYZ: Properties= announces forces, a line lacks them",
         {"a.xyz": xyz(*(f"2\nid={i} energy=-1 Properties=species:S:1:pos:R:3:forces:R:3\n"
                         f"H 0 0 0 0.1 0.2 0.3\nH 0 0 0.74{' 0.1 0.2 0.3' if i != 'bad' else ''}\n"
                         for i in ("good-1", "bad", "good-2")))}, convert("a.xyz"), 0,
         r"line 8: atom line needs 7 columns \(symbol x y z \+ forces\), got 4", 2),
    Case("spec-unknown-option", "spec: unknown option ?limt=2", {"a.xyz": xyz(GOOD1, GOOD2)},
         ["data", "convert", "--input", "{d}/a.xyz?limt=2", "--out", "{d}/out"], 2,
         r"unknown option 'limt' \(did you mean 'limit'\?\); options of file: format, charge, multiplicity, "
         r"limit", 0),
    Case("spec-negative-limit", "spec: ?limit=-1", {"a.xyz": xyz(GOOD1, GOOD2)},
         ["data", "convert", "--input", "embedded:qm9?limit=-1", "--out", "{d}/out"], 2,
         r"option limit='-1' must be an integer >= 0", 0),
    Case("spec-text-limit", "spec: ?limit=abc", {"a.xyz": xyz(GOOD1, GOOD2)},
         ["data", "convert", "--input", "embedded:qm9?limit=abc", "--out", "{d}/out"], 2,
         r"option limit='abc' must be an integer >= 0", 0),
    Case("ids-same-key", "ids mol.1, mol/1, mol_1 (one sanitised key before)",
         {"a.xyz": xyz(frame("mol.1"), frame("mol/1"), frame("mol_1"))}, convert("a.xyz"), 0,
         r"done 3, skipped 0, failed 0", 3),
    Case("ids-repeated", "the same id twice in one input", {"a.xyz": xyz(GOOD1, frame("good-1", H2), GOOD2)},
         convert("a.xyz"), 0, r"record 1 repeats the id 'good-1' of record 0; ids must be unique", 2),
    Case("sdf-bad-record", "SDF: a record RDKit cannot parse", {"mols.sdf": lambda d: _sdf(d, "parse")},
         convert("mols.sdf"), 0, r"mols\.sdf, record 1, line \d+: RDKit could not parse the record", 2),
    Case("sdf-nan-property", "SDF: NaN property", {"mols.sdf": lambda d: _sdf(d, "nan")}, convert("mols.sdf"), 0,
         r"record 1, line \d+: label energy=nan is not finite", 2),
    Case("sdf-not-utf8", "SDF: a record whose name is not UTF-8", {"mols.sdf": lambda d: _sdf(d, "utf8")},
         convert("mols.sdf"), 0, r"mols\.sdf, record 1, line \d+: not UTF-8 text", 2),
    Case("smiles-bad-lines", "SMILES file: non-UTF-8 line and an invalid SMILES",
         {"m.smi": b"O water\nCC\xff\xfe broken\nC1CC ring\nC methane\n"}, convert("m.smi"), 0,
         r"m\.smi, line 2: not UTF-8 text", 2),
    Case("out-memory-url", "--out memory:// (lost when the process ends)", {},
         ["data", "convert", "--input", "embedded:qm9?limit=2", "--out", "memory://scratch/out"], 2,
         r"memory://scratch/out: memory:// lives only as long as this process", None, count="none"),
    Case("out-unknown-protocol", "--out with an unknown fsspec protocol", {},
         ["data", "convert", "--input", "embedded:qm9?limit=2", "--out", "nosuchfs://bucket/out"], 2,
         r"unknown storage protocol 'nosuchfs'", None, count="none"),
    Case("disk-full-shard", "full disk while writing a shard", {},
         ["data", "convert", "--input", "embedded:qm9", "--out", "{d}/out"], 2,
         r"no space left writing shard .*shard-000000\.tar\.tmp \(sample qm9:\d+", 0, fsize_limit=20_000),
    Case("dft-too-large", "DFT: molecule over max_grid_points", {"a.xyz": xyz(
        frame("h2-a", H2), "2\nid=stretched multiplicity=3\nH 0 0 0\nH 0 0 30\n", frame("h2-b", H2))},
        [*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out", "--max-grid-points", "50000"], 0,
        r"too large for the DFT budget: cube grid \(\d+, \d+, \d+\) = \d+ points > max_grid_points 50000 "
        r"\(extent 0\.0 x 0\.0 x 30\.0 A\)", 2, count="results"),
    Case("dft-truncated-result", "DFT: a truncated result .npz on resume",
         {"a.xyz": xyz(frame("h2-a", H2), frame("h2-b", H2))},
         [*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out"], 0,
         r"is truncated or unreadable: its molecule will be computed again", 2, count="results",
         before=[*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out"], between=_truncate_one_result),
    Case("render-truncated-result", "render --fields: a DFT result file cut short",
         {"a.xyz": xyz(frame("h2-a", H2), frame("h2-b", H2), frame("h2-c", H2))},
         ["render", "--fields", "{d}/out", "--out", "{d}/img", "--image-size", "32", "--device", "cpu"], 0,
         r"not a readable DFT result file \(BadZipFile", 2, count="images",
         before=[*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out"], between=_truncate_one_result),
    Case("disk-full-dft", "full disk while writing a DFT result", {"a.xyz": xyz(frame("h2-a", H2))},
         [*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out"], 2,
         r"molecule h2-a: no space left writing .*h2-a\.npz", 0, count="results", fsize_limit=30_000),
    Case("render-too-large", "render: molecule over max_atoms",
         {"a.xyz": xyz(frame("h2-a", H2), GOOD1, frame("h2-b", H2))},
         ["render", "--input", "{d}/a.xyz", "--out", "{d}/out", "--image-size", "32", "--device", "cpu",
          "--max-atoms", "2"], 0, r"too large for the render budget: 3 atoms > max_atoms 2", 2),
    Case("shard-corrupt-header", "shard: corrupt tar header mid-file (training)",
         {"shards": lambda d: _shards(d, "header")},
         PRETRAIN, 0, r"corrupt tar header at byte \d+ .*: sample qm9:3 is failed .* 3 samples after it were read", 5,
         count="trained"),
    Case("shard-wrong-shape", "shard: a sample with images of the wrong size (training)",
         {"shards": lambda d: _shards(d, "shape")}, PRETRAIN, 0,
         r"bad sample skipped: .*synthetic-000000\.tar:qm9:3: edimg has shape \(6, 4, 16, 16\)", 5, count="trained"),
    Case("shard-missing-member", "shard: a sample without z.npy (training)", {"shards": lambda d: _shards(d, "member")},
         PRETRAIN, 0, r"bad sample skipped: .*qm9:3: sample lacks member\(s\) \['z\.npy'\]", 5, count="trained"),
    Case("shard-over-threshold", "shard: more bad samples than --max-bad-samples (training stops)",
         {"shards": lambda d: _shards(d, "shape")}, [*PRETRAIN, "--max-bad-samples", "0"], 2,
         r"1 bad samples in one pass, over max_bad_samples=0 \(first: .*qm9:3: edimg has shape", None, count="none"),
    Case("shard-u8z-bomb", "shard: u8z member inflating past its header (training)",
         {"shards": lambda d: _shards(d, "bomb")}, PRETRAIN, 0,
         r"qm9:3: member 'edimg\.u8z' cannot be decoded \(ValueError: u8z payload does not inflate to the 24576 bytes",
         5, count="trained"),
    Case("shard-zstd-bomb", "shard: u8zst member whose zstd frame declares 128 MiB (training)",
         {"shards": lambda d: _shards(d, "zstd-bomb")}, PRETRAIN, 0,
         r"qm9:3: member 'edimg\.u8zst' cannot be decoded \(ValueError: u8zst frame declares 134217728 bytes, not the "
         r"24576 bytes", 5, count="trained"),
    # ---- issue 23: readers (streams, resynchronisation, what a molecule cannot be, one-line answers)
    Case("xyz-12-digit-count", "XYZ: a 12-digit atom-count line between good frames",
         {"a.xyz": xyz(GOOD1, frame("bad", n=123456789012), GOOD2)}, convert("a.xyz"), 0,
         r"a\.xyz, frame 1, line 6: atom count 123456789012 is over the 10,000,000 atoms a frame may have", 2),
    Case("extxyz-lattice", "extXYZ: a periodic cell (Lattice=, pbc absent)",
         {"a.xyz": xyz(GOOD1, frame("bad", extra='Lattice="9 0 0 0 9 0 0 0 9"'), GOOD2)}, convert("a.xyz"), 0,
         r"frame 1, line 7: periodic cell \(Lattice='9 0 0 0 9 0 0 0 9'\): EDG computes isolated molecules", 2),
    Case("extxyz-pbc", "extXYZ: a periodic cell (pbc=\"T T T\")",
         {"a.xyz": xyz(GOOD1, frame("bad", extra='pbc="T T T"'), GOOD2)}, convert("a.xyz"), 0,
         r"frame 1, line 7: periodic cell \(pbc='T T T'\)", 2),
    Case("sdf-atoms-at-origin", "SDF: a record whose atoms all sit at the origin", {"mols.sdf": _sdf_at_origin},
         convert("mols.sdf"), 0,
         r"mols\.sdf, record 1, line \d+: coincident atoms: atoms 0 and 1 are 0\.000 Å apart \(< 0\.3 Å\)", 2),
    Case("xyz-close-pair", "XYZ: two atoms 0.2 Å apart",
         {"a.xyz": xyz(GOOD1, frame("bad", WATER.replace("0.757 -0.467", "0.0 0.317", 1)), GOOD2)}, convert("a.xyz"),
         0, r"frame 1, line 6: coincident atoms: atoms 0 and 1 are 0\.200 Å apart \(< 0\.3 Å\)", 2),
    Case("xyz-charge-minus-1000", "extXYZ: charge=-1000",
         {"a.xyz": xyz(GOOD1, frame("bad", extra="charge=-1000"), GOOD2)}, convert("a.xyz"), 0,
         r"impossible charge -1000: 1010 electrons on a nuclear charge of 10 \(more than 2 per proton\)", 2),
    Case("xyz-charge-no-electrons", "extXYZ: a charge that leaves no electrons",
         {"a.xyz": xyz(GOOD1, frame("bad", extra="charge=10"), GOOD2)}, convert("a.xyz"), 0,
         r"impossible charge \+10: leaves 0 electrons \(nuclear charge 10\)", 2),
    Case("spec-charge-conflict", "?charge= disagreeing with the frame's charge=",
         {"a.xyz": xyz(GOOD1, frame("bad", "O 0 0 0\nH 0 0 0.97\n", extra="charge=-1"), GOOD2)},
         ["data", "convert", "--input", "{d}/a.xyz?charge=0", "--out", "{d}/out"], 0,
         r"frame 1, line 7: charge=-1 on the comment line but \?charge=0 in the spec", 2),
    Case("spec-charge-not-integer", "spec: ?charge=abc", {"a.xyz": xyz(GOOD1, GOOD2)},
         ["data", "convert", "--input", "{d}/a.xyz?charge=abc", "--out", "{d}/out"], 2,
         r"option charge='abc' must be an integer", 0),
    Case("input-no-molecules", "an input with no molecules (empty file)", {"a.xyz": b""},
         convert("a.xyz"), 2, r"error: input '\S+a\.xyz': no molecules$", 0),
    Case("input-folder", "a folder as --input", {"a.xyz": xyz(GOOD1)},
         ["data", "convert", "--input", "{d}", "--out", "{d}/out"], 2,
         r"error: input '\S+' is a folder, not a file of molecules", 0),
    Case("out-not-writable", "an --out that cannot be created (a file on its path)", {"a.xyz": xyz(GOOD1)},
         ["data", "convert", "--input", "{d}/a.xyz", "--out", "{d}/a.xyz/out"], 2,
         r"error: --out \S+/a\.xyz/out: cannot be created, \S+/a\.xyz is a file, not a folder", None, count="none"),
    Case("dft-inferred-charge", "DFT: a hydroxide XYZ without charge= (computed as stated, and the log says so)",
         {"a.xyz": xyz(frame("oh", "O 0 0 0\nH 0 0 0.97\n"))}, [*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out"], 0,
         r"oh: charge and multiplicity not stated by the input: computing charge 0, multiplicity 2 \(UKS\)", 1,
         count="results"),
    Case("dft-500-atoms", "DFT: a 500-atom molecule under the default budgets",
         {"a.xyz": xyz(frame("h2-a", H2), _carbon_lattice(500, "big"), frame("h2-b", H2))},
         [*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out"], 0,
         r"too large for the DFT budget: 500 atoms > max_atoms 200", 2, count="results"),
    Case("dft-basis-budget", "DFT: molecule over max_basis_functions",
         {"a.xyz": xyz(frame("h2-a", H2), GOOD1, frame("h2-b", H2))},
         [*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out", "--max-basis-functions", "5"], 0,
         r"too large for the DFT budget: 7 basis functions \(sto-3g, cartesian\) > max_basis_functions 5", 2,
         count="results"),
    Case("dft-time-limit", "DFT: --time-limit-s shorter than any SCF (every molecule stops; the run goes on)",
         {"a.xyz": xyz(frame("h2-a", H2), frame("h2-b", H2))},
         [*DFT, "--input", "{d}/a.xyz", "--out", "{d}/out", "--time-limit-s", "0.000001"], 0,
         r"timeout: .*SCF", 0, count="results"),
    # ---- issue 23: shards that lie (a member name, a key, a size, the JSON, the arrays)
    Case("shard-absolute-name", "shard: a member named with an absolute path (training)",
         {"shards": lambda d: _lying_shards(d, "absolute")}, PRETRAIN, 0,
         r"bad sample skipped: .*\.tar:/etc/qm9:3: member name '/etc/qm9:3\.\S+' is an absolute path", 5,
         count="trained"),
    Case("shard-dotdot-name", "shard: a member named with a '..' component (edg data info)",
         {"shards": lambda d: _lying_shards(d, "dotdot")}, info(), 0,
         r"\.tar:\.\./\.\./qm9:3: member name '\.\./\.\./qm9:3\.\S+' has a '\.\.' component", 5, count="info"),
    Case("shard-duplicate-key", "shard: a key used again further on in the shard (edg data info)",
         {"shards": lambda d: _lying_shards(d, "duplicate")}, info(), 0,
         r"\.tar:qm9:1: the key 'qm9:1' is used again by another sample of this shard", 6, count="info"),
    Case("shard-10gb-header", "shard: a member header claiming 10 GB (training)",
         {"shards": lambda d: _lying_shards(d, "huge-size")}, PRETRAIN, 0,
         r"bad sample skipped: .*\.tar:qm9:3: member qm9:3\.meta\.json claims 10000000000 bytes but the shard ends",
         5, count="trained"),
    Case("shard-meta-not-object", "shard: a meta.json that is a JSON list (training)",
         {"shards": lambda d: _lying_shards(d, "not-object")}, PRETRAIN, 0,
         r"bad sample skipped: .*\.tar:qm9:3: meta\.json holds a JSON list, not an object", 5, count="trained"),
    Case("shard-meta-bad-json", "shard: a meta.json that is not JSON (edg data info)",
         {"shards": lambda d: _lying_shards(d, "bad-json")}, info(), 0,
         r"\.tar:qm9:3: meta\.json is not JSON \(JSONDecodeError", 5, count="info"),
    Case("shard-meta-deep", "shard: a meta.json nested 10^5 deep (training)",
         {"shards": lambda d: _lying_shards(d, "deep")}, PRETRAIN, 0,
         r"bad sample skipped: .*\.tar:qm9:3: meta\.json is nested too deep to parse", 5, count="trained"),
    Case("shard-z-pos-mismatch", "shard: z and pos of different lengths (training)",
         {"shards": lambda d: _lying_shards(d, "z-pos")}, PRETRAIN, 0,
         r"bad sample skipped: .*\.tar:qm9:3: pos has shape \(2, 3\) but z has \d+ atoms", 5, count="trained"),
    Case("shard-meta-deep-extract", "shard: a meta.json nested 10^5 deep (edg extract)",
         {"shards": lambda d: _lying_shards(d, "deep")},
         ["extract", "imageed-features", "--model", "{d}/run", "--shards", "{d}/shards", "--out", "{d}/out",
          "--device", "cpu"], 0, r"meta\.json is nested too deep to parse", 5, before=PRETRAIN),
    Case("shard-lies-over-threshold", "shard: a JSON bad sample over --max-bad-samples (training stops)",
         {"shards": lambda d: _lying_shards(d, "not-object")}, [*PRETRAIN, "--max-bad-samples", "0"], 2,
         r"1 bad samples in one pass, over max_bad_samples=0 \(first: .*qm9:3: meta\.json holds a JSON list", None,
         count="none"),
    # ---- issue 23: pickles that ask for too much
    Case("pickle-bytearray-4gib", "pickle: 59 bytes asking bytearray(4 GiB)",
         {"feats.pkl": lambda d: _pickle(d, "bytearray")},
         ["import", "ed-features", "--src", "{d}/feats.pkl", "--out", "{d}/fu.npz"], 2,
         r"feats\.pkl: the pickle asks builtins\.bytearray for 4294967296 bytes \(a zero-filled buffer\), over the "
         r"limit of 1073741824 bytes \(raise it with EDG_PICKLE_MAX_BYTES\); refused before allocating", None,
         count="none"),
    Case("pickle-ndarray-huge", "pickle: numpy.ndarray((200000, 100000))",
         {"feats.pkl": lambda d: _pickle(d, "ndarray")},
         ["import", "ed-features", "--src", "{d}/feats.pkl", "--out", "{d}/fu.npz"], 2,
         r"feats\.pkl: the pickle asks numpy\.ndarray for 160000000000 bytes \(shape \(200000, 100000\) of float64\)",
         None, count="none"),
    Case("pth-refused-global", "teacher .pth naming a global torch refuses", {"teacher.pth": _refused_pth},
         ["import", "teacher", "--src", "{d}/teacher.pth", "--out", "{d}/teacher.pt"], 2,
         r"teacher\.pth: the file refers to datetime\.date, which is not plain data \(tensors, containers, numbers\); "
         r"refused without running it", None,
         count="none"),
    Case("pth-allocating-constructor", "teacher .pth whose pickle calls bytearray(1.5 GiB)",
         {"teacher.pth": _allocating_pth},
         ["import", "teacher", "--src", "{d}/teacher.pth", "--out", "{d}/teacher.pt"], 2,
         r"teacher\.pth: the checkpoint calls builtins\.bytearray, which allocates what its arguments ask and which a "
         r"checkpoint of tensors never needs; refused without running it", None, count="none"),
    # ---- issue 23: archives and markers that lie
    Case("fetch-marker-checksum", "fetch: a rerun with a checksum other than the one the marker records",
         {"data": lambda d: _marker(d, json.dumps({"url": "u", "digests": {"sha256": "ab" * 32, "md5": "cd" * 16,
                                                                            "size": 9}}).encode())},
         fetch("--sha256", "ef" * 32), 2,
         r"fetched before, per \.edg-fetched\.json\): sha256 is (ab){32}, expected (ef){32}", None, count="none"),
    Case("fetch-marker-member", "fetch: an archive member named like the completion marker",
         {"archive.tar.bz2": lambda d: _archive(d, "marker")}, fetch(), 2,
         r"member '\.edg-fetched\.json' uses the reserved name '\.edg-fetched\.json' \(EDG's completion marker\)",
         0, count="fetched"),
    Case("fetch-truncated-bz2", "fetch: a multi-block bz2 archive cut short",
         {"archive.tar.bz2": lambda d: _archive(d, "truncated")}, fetch(), 2,
         r"truncated or corrupt archive \(EOFError: Compressed file ended before the end-of-stream marker was "
         r"reached\); nothing was extracted", 0, count="fetched"),
    Case("fetch-file-then-folder", "fetch: an archive path that is a file and then a folder",
         {"archive.tar.bz2": lambda d: _archive(d, "file-then-folder")}, fetch(), 2,
         r"member 'rmd17/npz_data/rmd17_ethanol\.npz' needs 'rmd17/npz_data' to be a folder, but it is a file", 0,
         count="fetched"),
    Case("fetch-malformed-marker", "fetch: a completion marker that is not EDG's",
         {"data": lambda d: _marker(d, b'{"url": "u", "digests": "none"}')}, fetch(), 2,
         r"\.edg-fetched\.json: not a completion marker EDG wrote \(no 'url' string or 'digests' object\); delete "
         r"\S+ to fetch again", None, count="none"),
    # ---- issue 23 item 9 / issue 25 item 1: hostile model files (edg export's format; docs/export.md)
    Case("model-pickle", "model file: a pickle that calls os.system", *predict_model("pickle"), 2,
         r"model\.pt2: not a model file \(not a readable zip archive: File is not a zip file\)", None,
         count="none"),
    Case("model-member-twice", "model file: a zip with a graph member twice", *predict_model("twice"), 2,
         r"model\.pt2: forged archive: member 'archive/models/atoms2to25\.json' appears twice", None,
         count="none"),
    Case("model-pickled-weight", "model file: a weight stored as a pickle", *predict_model("pickled-weight"), 2,
         r"data/weights/atoms2to25_weights_config\.json: w is stored as a pickle \(torch would unpickle it in "
         r"full\); refused", None, count="none"),
    Case("model-node-target", "model file: a graph node calling torch.os.system", *predict_model("target"), 2,
         r"graph atoms2to25: node target 'torch\.os\.system' is not an admitted ATen operator; refused without "
         r"resolving it", None, count="none"),
    Case("model-sympy-code", "model file: a size expression that is Python code", *predict_model("sympy"), 2,
         r"graph atoms2to25: symbolic expression \"__import__\('os'\)\.system\('touch ran'\)\" holds Call, which is "
         r"not size arithmetic; refused without evaluating it", None, count="none"),
    Case("model-oversized-tensor", "model file: a weight declaring 10^12 elements and holding none",
         *predict_model("oversized"), 2,
         r"w declares 1000000000000 elements \(sizes \[1000000, 1000000\]\) but its record holds 0; refused before "
         r"allocating", None, count="none"),
    # ---- issue 23: config alias bombs
    Case("config-alias-bomb-dft", "config: 1 KB YAML alias bomb in a list field (edg dft)", {"bomb.yaml": _alias_bomb},
         [*DFT, "--input", "embedded:qm9?limit=1", "--out", "{d}/out", "--config", "{d}/bomb.yaml"], 2,
         r"bomb\.yaml: the YAML holds more than 100000 values once its aliases are expanded \(an alias bomb\?\); "
         r"refused", 0, count="results"),
    Case("config-alias-bomb-pipeline", "config: 1 KB YAML alias bomb (edg pipeline)", {"bomb.yaml": _alias_bomb},
         ["pipeline", "--config", "{d}/bomb.yaml", "--out", "{d}/out"], 2,
         r"bomb\.yaml: the YAML holds more than 100000 values once its aliases are expanded", None, count="none"),
]


@dataclass
class Row:
    case: Case
    command: str
    code: int
    message: str
    kept: int | None

    @property
    def green(self) -> bool:
        c = self.case
        return self.code == c.code and re.search(c.message, self.message) is not None and self.kept == c.kept


def _argv(case: Case, d: Path, argv: list[str]) -> list[str]:
    return [a.replace("{d}", str(d)) for a in argv]


def _run(argv: list[str], env: dict, fsize_limit: int | None, cwd: Path) -> tuple[int, str]:
    """Exit code and everything the command printed and logged."""
    if fsize_limit is not None:  # a child process whose files may not grow past fsize_limit bytes: a full disk
        code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize_limit}, {fsize_limit})); "
                "from edg.cluster.cli import main; sys.exit(main(sys.argv[1:]))")
        p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd,
                           env={**os.environ, **env, "PYTHONPATH": str(REPO)}, timeout=600)
        return p.returncode, p.stdout + p.stderr
    from edg.cluster.cli import main
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    root.addHandler(handler)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    finally:
        root.removeHandler(handler)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, buf.getvalue()


def _kept(case: Case, d: Path, output: str) -> int | None:
    if case.count == "none":
        return None
    if case.count == "shards":
        from edg.edg_core.shards import shard_keys
        return len(shard_keys(d / "out")) if (d / "out").exists() else 0
    if case.count == "images":
        from edg.edg_core.shards import shard_keys
        return len(shard_keys(d / "img"))
    if case.count == "results":
        if not (d / "out").exists():
            return 0
        from edg.dft.worker import done_keys
        return len(done_keys(d / "out"))
    if case.count == "info":  # the good samples edg data info read
        return _info_json(output)["molecules"]
    if case.count == "fetched":  # files an edg fetch left in its folder (none after a failure)
        return sum(1 for p in (d / "data").rglob("*") if p.is_file()) if (d / "data").exists() else 0
    # trained: samples in the shards minus the distinct ones the reader named as bad (training went on: exit 0)
    from edg.edg_core.shards import shard_keys
    bad = set(re.findall(r"bad sample skipped: \S+?\.tar:(\S+): ", output))
    return len(shard_keys(d / "shards")) - len(bad)


def _info_json(output: str) -> dict:
    """The JSON object ``edg data info --json`` printed (its first line is ``{``)."""
    start = output.index("{\n") if output.startswith("{\n") else output.index("\n{\n") + 1
    return json.JSONDecoder().raw_decode(output[start:])[0]


def _message(case: Case, d: Path, output: str) -> str:
    """The failure-manifest reason of the bad record when there is one, ``edg data info``'s first invalid
    record, else the matching output line."""
    if case.count == "info":
        return (_info_json(output).get("first_invalid") or ["no invalid record"])[0]  # "shard:key: reason"
    for f in (d / "out" / "failures.jsonl", d / "img" / "failures.jsonl"):
        if f.exists():
            for line in f.read_text().splitlines():
                e = json.loads(line)
                if re.search(case.message, e.get("reason", "")):
                    return f"{e.get('record')}: {e.get('reason')}"  # record (id or file) and reason, as logged
    lines = [ln for ln in output.splitlines() if re.search(case.message, ln)]
    line = lines[0] if lines else (output.strip().splitlines() or [""])[-1]
    return re.sub(r" in [\d.]+ s \([\d.]+ molecules/s,? ?", " (", line)  # timings would change the table every run


def run_case(case: Case, root: Path) -> Row:
    d = root / case.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, content in case.files.items():
        if callable(content):
            content(d)
        else:
            (d / name).write_bytes(content)
    env = {"EDG_PROGRESS": "0", **case.env}
    if case.before:
        rc, out = _run(_argv(case, d, case.before), env, None, d)
        if rc != 0:
            return Row(case, "(setup) edg " + " ".join(case.before), rc, out.strip()[-300:], None)
        if case.between:
            case.between(d)
    argv = _argv(case, d, case.argv)
    code, output = _run(argv, env, case.fsize_limit, d)
    message = _message(case, d, output)
    shown = " ".join(a.replace(str(d), ".") for a in argv)
    return Row(case, f"edg {shown}", code, message.replace(str(d), "."), _kept(case, d, output))


def table(rows: list[Row]) -> str:
    head = ("| bad input | command | exit code | message | records kept | ok |\n"
            "|---|---|---|---|---|---|\n")
    body = []
    for r in rows:
        msg = r.message.replace("|", "\\|")
        if len(msg) > 240:
            msg = msg[:237] + "..."
        kept = "-" if r.kept is None else f"{r.kept} of {r.case.kept}"
        body.append(f"| {r.case.what} | `{r.command}` | {r.code} | {msg} | {kept} | "
                    f"{'green' if r.green else 'RED'} |")
    return head + "\n".join(body) + "\n"


DOC_HEAD = """# Bad inputs: what each command does with them

Produced by `scripts/bad_inputs.py --write docs/bad_inputs.md` (and checked row by row by
`tests/test_bad_inputs.py`): every row writes a fixture with good records around one bad record (or one bad
option, URL or resource), runs the real `edg` command, and checks the exit code, the message (the reason in the
failure manifest `<out>/failures.jsonl`, `edg data info`'s first invalid record, else the error or log line) and
how many good records reached the output (samples in the shards, DFT result files, the good samples `edg data
info` counted, the files an `edg fetch` left in its folder (none after a failure), or for training: the samples
in the shards minus those the reader named as bad, training having gone on to the end). Exit code 0 with a
failure-manifest entry means: the bad record was reported and the job went on; exit code 2 means a clear
one-line error before (or instead of) any work. `.` is the case's folder.

"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", help="write the markdown table to this file")
    ap.add_argument("--only", default="", help="run only cases whose name starts with this")
    ap.add_argument("--keep", help="keep the cases' folders under this folder")
    args = ap.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edg-bad-inputs-"))
    rows = []
    try:
        for case in CASES:
            if case.name.startswith(args.only):
                rows.append(run_case(case, root))
                r = rows[-1]
                print(f"{'green' if r.green else 'RED  '} {case.name}: exit {r.code}, kept {r.kept}: {r.message[:150]}",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = table(rows)
    if args.write:
        from edg.edg_core.io import write_bytes_atomic
        write_bytes_atomic(args.write, (DOC_HEAD + text).encode())
    else:
        print(text)
    return 0 if all(r.green for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
