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
    count: str = "shards"          # shards | images | results | trained | none
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


def _shards(d: Path, damage: str) -> None:
    """Six samples with synthetic 32-px images, one of them damaged as ``damage`` says."""
    from edg.edg_core.readers import open_source
    from edg.edg_core.shards import ShardWriter, encode_sample
    from edg.train.data import synthetic_images
    mols = list(open_source("embedded:qm9?limit=6").molecules())
    with ShardWriter(d / "shards", "synthetic", maxcount=100) as w:
        for i, m in enumerate(mols):
            ed, st = synthetic_images(m.z, m.pos, 16 if (damage == "shape" and i == 2) else 32)
            s = encode_sample(m, edimg=ed, stimg=st)
            if damage == "member" and i == 2:
                del s["z.npy"]
            if damage == "bomb" and i == 2:  # 6x4x32x32 announced, 16 MB inside
                s["edimg.u8z"] = struct.pack("<4I", 6, 4, 32, 32) + zlib.compress(b"\0" * (1 << 24))
            w.write(s)
    if damage == "header":
        shard = d / "shards" / "synthetic-000000.tar"
        with tarfile.open(shard) as t:
            off = next(m.offset for m in t.getmembers() if m.name.startswith(f"{mols[2].id}."))
        data = bytearray(shard.read_bytes())
        data[off:off + 20] = b"\xff" * 20
        shard.write_bytes(bytes(data))


def _truncate_one_result(d: Path) -> None:
    from edg.dft.worker import result_files
    p = Path(sorted(result_files(d / "out"))[0])
    p.write_bytes(p.read_bytes()[:-100])


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
         r"unknown option 'limt' \(did you mean 'limit'\?\); options of file: limit", 0),
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
        from edg.dft.worker import done_keys
        return len(done_keys(d / "out"))
    # trained: samples in the shards minus the distinct ones the reader named as bad (training went on: exit 0)
    from edg.edg_core.shards import shard_keys
    bad = set(re.findall(r"bad sample skipped: \S+?\.tar:(\S+): ", output))
    return len(shard_keys(d / "shards")) - len(bad)


def _message(case: Case, d: Path, output: str) -> str:
    """The failure-manifest reason of the bad record when there is one, else the matching output line."""
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
failure manifest `<out>/failures.jsonl`, else the error or log line) and how many good records reached the
output (samples in the shards, DFT result files, or for training: the samples in the shards minus those the
reader named as bad, training having gone on to the end). Exit code 0 with a
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
