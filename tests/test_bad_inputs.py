"""Every row of the bad-input table (scripts/bad_inputs.py, docs/bad_inputs.md) is green: the real ``edg``
command gives the expected exit code and message, and keeps every good record around the bad one."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bad_inputs", Path(__file__).parents[1] / "scripts" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = bad_inputs  # dataclasses look their module up there
_spec.loader.exec_module(bad_inputs)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in bad_inputs.CASES])
def test_bad_input(case, tmp_path, monkeypatch):
    monkeypatch.delenv("EDG_ALLOW_MEMORY_OUT", raising=False)
    monkeypatch.delenv("EDG_MAX_BAD_SAMPLES", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    row = bad_inputs.run_case(case, tmp_path)
    assert row.code == case.code, row.message
    assert re.search(case.message, row.message), row.message
    assert row.kept == case.kept, row.message


def test_the_table_names_every_case():
    assert len({c.name for c in bad_inputs.CASES}) == len(bad_inputs.CASES) >= 30
    doc = (Path(__file__).parents[1] / "docs" / "bad_inputs.md").read_text()
    assert all(c.what in doc for c in bad_inputs.CASES) and "RED" not in doc
