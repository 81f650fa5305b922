"""Small things a newcomer trips over: id order on contact sheets, one flag name per idea, tiny-split warnings."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edg.edg_core.readers import open_source
from edg.edg_core.shards import ShardWriter, encode_sample
from edg.render.contact_sheet import contact_sheet, first_molecules, natural_key

ROOT = Path(__file__).resolve().parent.parent


def test_natural_key_orders_numbers_by_value():
    ids = ["qm9:10", "qm9:2", "qm9:1", "qm9:100", "rmd17:aspirin:12", "rmd17:aspirin:7", "qm9:11"]
    assert sorted(ids, key=natural_key) == ["qm9:1", "qm9:2", "qm9:10", "qm9:11", "qm9:100",
                                            "rmd17:aspirin:7", "rmd17:aspirin:12"]


def test_contact_sheet_shows_the_smallest_ids_in_natural_order(tmp_path):
    """Shards are written in completion order; the sheet takes the molecules with the smallest ids."""
    mols = list(open_source("embedded:qm9?limit=12").molecules())
    order = [11, 0, 9, 3, 10, 1, 8, 2, 7, 4, 6, 5]  # qm9:12, qm9:1, qm9:10, qm9:4, qm9:11, qm9:2, ...
    img = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    with ShardWriter(tmp_path / "shards", maxcount=5) as w:
        for i in order:
            w.write(encode_sample(mols[i], stimg=img))
    picked = first_molecules(tmp_path / "shards", 4)
    assert [s["meta"]["id"] for s in picked] == ["qm9:1", "qm9:2", "qm9:3", "qm9:4"]
    assert picked[0]["stimg"].shape[0] == 4
    # only the first `scan` samples are looked at (a large run is not read whole for a preview)
    assert [s["meta"]["id"] for s in first_molecules(tmp_path / "shards", 2, scan=3)] == ["qm9:1", "qm9:10"]
    contact_sheet([(f"{s['meta']['id']} structure", s["stimg"]) for s in picked], tmp_path / "sheet.png")
    from PIL import Image
    assert Image.open(tmp_path / "sheet.png").size[1] == 4 * 112


def test_contact_sheet_keeps_the_first_read_of_equal_ids(tmp_path):
    """Equal ids (a molecule rendered twice into one folder) are ordered as read, the first one kept when only
    one fits. A bounded max-heap that broke ties by read order without reversing it (the hand-written heap this
    replaced) evicted the first copy of qm9:2 for qm9:1 and showed the second."""
    mols = list(open_source("embedded:qm9?limit=3").molecules())
    copies = [np.full((4, 3, 8, 8), v, dtype=np.float32) for v in (0.25, 0.75)]
    with ShardWriter(tmp_path / "shards", maxcount=10) as w:
        w.write(encode_sample(mols[1], stimg=copies[0]))
        w.write({**encode_sample(mols[1], stimg=copies[1]), "__key__": "qm9_2_again"})
        w.write(encode_sample(mols[2], stimg=copies[1]))
        w.write(encode_sample(mols[0], stimg=copies[1]))
    picked = first_molecules(tmp_path / "shards", 2)
    assert [s["meta"]["id"] for s in picked] == ["qm9:1", "qm9:2"]
    assert float(picked[1]["stimg"].mean()) < 0.5  # the first copy
    both = first_molecules(tmp_path / "shards", 3)
    assert [s["meta"]["id"] for s in both] == ["qm9:1", "qm9:2", "qm9:2"]
    assert [float(s["stimg"].mean()) > 0.5 for s in both[1:]] == [False, True]


def test_ray_address_is_one_flag_everywhere():
    """Every command that joins a Ray cluster spells it --ray-address (benchmark keeps --address hidden)."""
    import argparse

    from edg.cluster.cli import build_parser
    parser = build_parser()

    def walk(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from walk(sp, [*path, name])
            elif a.help != argparse.SUPPRESS:
                yield path, a.option_strings
    flags = list(walk(parser, []))
    address_like = {(" ".join(p), o) for p, opts in flags for o in opts if "address" in o}
    assert address_like and all(o == "--ray-address" for _, o in address_like), address_like
    assert parser.parse_args(["benchmark", "--address", "auto"]).ray_address == "auto"
    assert parser.parse_args(["benchmark", "--ray-address", "auto"]).ray_address == "auto"


def test_tiny_representation_split_warns(caplog):
    from edg.train.data.study import split_indices
    with caplog.at_level(logging.WARNING, logger="edg.train.loops.representation"):
        s = split_indices(5, (0.8, 0.1, 0.1), 0)
    assert len(s["test"]) == 1 and "tiny split of 5 molecules" in caplog.text and "1 test" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edg.train.loops.representation"):
        split_indices(200, (0.8, 0.1, 0.1), 0)
    assert "tiny split" not in caplog.text


def test_render_from_fields_goes_in_natural_id_order(tmp_path):
    """`edg render --fields DIR` (and its --preview) takes DFT results in id order, whatever their folders."""
    import argparse

    from edg.cluster.commands.render import _items
    for bucket, key in (("7f", "qm9:10"), ("0a", "qm9:2"), ("c3", "qm9:1"), ("0a", "qm9:11")):
        (tmp_path / "fields" / bucket).mkdir(parents=True, exist_ok=True)
        (tmp_path / "fields" / bucket / f"{key}.npz").write_bytes(b"")
    items, n = _items(argparse.Namespace(fields=str(tmp_path), input=None))
    assert n == 4 and [str(p).rsplit("/", 1)[-1] for p in items] == ["qm9:1.npz", "qm9:2.npz", "qm9:10.npz",
                                                                     "qm9:11.npz"]


@pytest.mark.parametrize("argv,expected", [
    (["distill", "--student", "schnett"], "unknown student 'schnett' (did you mean 'schnet'?)"),
    (["distill", "--dataset", "rmd17:etanol?root=embedded"],
     "unknown rMD17 molecule 'etanol' (did you mean 'ethanol'?)"),
    (["benchmark", "--students", "schnet", "visnett"], "unknown student 'visnett' (did you mean 'visnet'?)"),
])
def test_a_misspelt_name_is_answered_before_torch_is_imported(argv, expected):
    code = ("import sys\n"
            "from edg.cluster.cli import main\n"
            f"rc = main({argv!r})\n"
            "print('torch' in sys.modules, rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split() == ["False", "2"], (r.stdout, r.stderr[-1500:])
    assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_ordinary_command_prints_no_library_deprecation_warning(tmp_path):
    """edg distill on the embedded ethanol frames: no torch.jit.script FutureWarning (torch-geometric's import),
    no DataLoader worker warning."""
    r = subprocess.run([sys.executable, "-m", "edg.cluster.cli", "distill", "--dataset",
                        "rmd17:ethanol?root=embedded", "--epochs", "1", "--batch-size", "8",
                        "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "EDG_PROGRESS": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Warning" not in r.stderr, r.stderr[-2000:]
