"""Experiment tracking: the one epoch loop writes TensorBoard event files in the run folder (every numeric column
of an epoch row, with its unit; ImageED's reconstruction panels as images) and prints the logdir line."""
from __future__ import annotations

import pytest
from edg.train.io.tensorboard import tag_for


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(folder), size_guidance={"images": 0})
    ea.Reload()
    return ea


def test_tags_carry_split_and_unit():
    units = {"energy_mae": "kcal/mol", "loss": "(L_task + lambda L_ED)"}
    assert tag_for("valid_energy_mae", units) == "valid/energy_mae [kcal/mol]"
    assert tag_for("train_loss", units) == "train/loss (L_task + lambda L_ED)"
    assert tag_for("train_seconds", units) == "speed/train_seconds [s]"
    assert tag_for("epoch", units) is None and tag_for("lr", units) == "optim/lr"


def test_the_readme_quick_distill_writes_event_files(tmp_path, capsys):
    from edg.cluster.cli import main
    out = tmp_path / "quick"
    assert main(["distill", "--dataset", "rmd17:ethanol?root=embedded", "--teacher-targets", "standin:coulomb",
                 "--lambda", "0.1", "--epochs", "2", "--batch-size", "4", "--out", str(out)]) == 0
    run = out / "schnet__rmd17-ethanol__lam0.1__seed42"
    text = capsys.readouterr().out
    assert f"tensorboard --logdir {(run / 'tensorboard').resolve()}" in text
    ea = _scalars(run / "tensorboard")
    tags = ea.Tags()["scalars"]
    assert "valid/energy_mae [kcal/mol]" in tags and "train/ed_loss (L_ED)" in tags
    steps = [e.step for e in ea.Scalars("valid/energy_mae [kcal/mol]")]
    assert steps == [1, 2]  # epochs count from 1
    import json
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in ea.Scalars("valid/energy_mae [kcal/mol]")] == pytest.approx(
        [r["valid_energy_mae"] for r in rows], rel=1e-6)
