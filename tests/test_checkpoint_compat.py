"""Checkpoints and run folders written by EDG before the one epoch loop (``train.loops``) still resume.

Each test trains part of a schedule, rewrites the resumable checkpoint in the layout the earlier loops wrote
(``_old_*``: the dicts of ``train/loops/pretrain.py:train_stage``, ``train/loops/distill.py:train_student`` and
``train/loops/representation.py:train_representation`` before the change, key for key, with their epoch numbering),
resumes it with today's loop and checks the result against a run that was never interrupted.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from edg.edg_core.io import read_jsonl
from edg.train.data.shards import write_synthetic_shards
from edg.train.io.checkpoint import CheckpointError, Checkpoints, load_checkpoint, save_checkpoint
from edg.train.loops.run_state import CHECKPOINT_FORMAT, load_run_checkpoint, upgrade_checkpoint

ROOT = "/work/shared/data/rmd17"


def _only_checkpoint(run) -> tuple:
    files = Checkpoints(run / "checkpoint").files()
    assert len(files) == 1, files
    return files[0], load_checkpoint(files[0])


# ---------------------------------------------------------------- the layouts of earlier EDG versions
def _old_pretrain(ck: dict) -> dict:
    """``train_stage``'s checkpoint: ``epoch`` = 0-based index of the last epoch finished; history rows 0-based;
    the export keys (``imageed_config``/``teacher_config``, ``model``) last."""
    export = {k: v for k, v in ck.items() if k.endswith("_config") or k.startswith("ed_predictor")}
    history = [{k: v for k, v in r.items() if k != "train_seconds"} | {"epoch": r["epoch"] - 1}
               for r in ck["history"]]
    return {"stage": ck["name"], "epoch": ck["epoch"] - 1, "steps_per_epoch": ck["extra"]["steps_per_epoch"],
            "model": ck["model"], "optimizer": ck["optimizer"], "scheduler": ck["scheduler"],
            "config": ck["config"], "history": history, **export, "model": ck["model"]}  # noqa: F601 (as written)


def _old_student(ck: dict) -> dict:
    """``train_student``'s checkpoint: the loop state under ``state``; the history only in metrics.jsonl."""
    b = ck["best"]
    return {"model": ck["model"], "optimizer": ck["optimizer"], "scheduler": ck["scheduler"],
            "mapper": ck["modules"].get("mapper"), "generator": ck["generator"],
            "state": {"epoch": ck["epoch"], "best": b["value"], "best_epoch": b["epoch"] or -1,
                      "valid": b["extra"]["valid"], "test": b["extra"]["test"],
                      "test_errors": b["extra"]["test_errors"], "seconds": ck["seconds"],
                      "best_state": b["weights"]}}


def _old_representation(ck: dict) -> dict:
    """``train_representation``'s checkpoint: the history as lists, entry 0 of valid_std_mae the untrained model."""
    b = ck["best"]
    history = {"train_loss": [r["train_loss"] for r in ck["history"]],
               "valid_std_mae": [ck["extra"]["untrained_valid_std_mae"], *(r["valid_std_mae"] for r in ck["history"])]}
    return {"model": ck["model"], "optimizer": ck["optimizer"], "scheduler": ck["scheduler"],
            "generator": ck["generator"], "epoch": ck["epoch"], "history": history, "seconds": ck["seconds"],
            "best": {"value": b["value"], "epoch": b["epoch"], "model": b["weights"]}}


def _make_old(run, layout) -> dict:
    path, ck = _only_checkpoint(run)
    old = layout(ck)
    save_checkpoint(old, path)
    return old


# ---------------------------------------------------------------- pretraining
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("compat_shards")
    write_synthetic_shards(out, size=32, maxcount=12, limit=24)
    return out


def test_old_pretraining_checkpoint_and_metrics_resume(tmp_path, shards):
    from edg.train.io.model_files import load_imageed
    from edg.train.loops.pretrain import ImageEDTrainConfig, train_imageed
    from edg.train.models.imageed import imageed_preset
    cfg = ImageEDTrainConfig(model=imageed_preset("tiny"), epochs=3, warmup_epochs=0, batch_size=8, num_workers=0,
                             lr=1e-3, shuffle_buffer=8, checkpoint_every=1, val_fraction=0.25)
    straight = train_imageed(cfg, shards, tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop_after_two(row, written):
        if row["epoch"] == 2:
            raise Stop
    with pytest.raises(Stop):
        train_imageed(cfg, shards, tmp_path / "old", report=stop_after_two)
    old = _make_old(tmp_path / "old", _old_pretrain)
    assert old["epoch"] == 1 and "format" not in old
    rows = read_jsonl(tmp_path / "old" / "metrics.jsonl")  # as the old loop logged them: from 0
    (tmp_path / "old" / "metrics.jsonl").write_text("".join(json.dumps({**r, "epoch": r["epoch"] - 1}) + "\n"
                                                            for r in rows))
    up = load_run_checkpoint(Checkpoints(tmp_path / "old" / "checkpoint").latest())
    assert up["format"] == CHECKPOINT_FORMAT and up["epoch"] == 2 and up["name"] == "imageed"
    assert [r["epoch"] for r in up["history"]] == [1, 2] and "imageed_config" in up
    assert up["best"]["value"] == min(r["valid_loss"] for r in up["history"])

    resumed = train_imageed(cfg, shards, tmp_path / "old")
    assert resumed["epoch"] == 3 and resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "old" / "metrics.jsonl")] == [1, 2, 3]  # renumbered
    a, b = load_imageed(tmp_path / "straight"), load_imageed(tmp_path / "old")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7, msg=name)


def test_old_export_keys_still_load_from_an_epoch_checkpoint(tmp_path):
    """A model loader given an old run folder with only an epoch checkpoint reads the model from it."""
    from edg.train.io.model_files import imageed_state, load_imageed
    from edg.train.models.imageed import ImageED, imageed_preset
    torch.manual_seed(0)
    m = ImageED(imageed_preset("tiny"))
    save_checkpoint({"stage": "imageed", "epoch": 0, "steps_per_epoch": 1, "optimizer": {}, "scheduler": {},
                     "config": {}, "history": [], **imageed_state(m)},
                    tmp_path / "checkpoint" / "epoch-000001.pt")
    back = load_imageed(tmp_path)
    torch.testing.assert_close(back.state_dict()["patch_embed.weight"], m.state_dict()["patch_embed.weight"])


# ---------------------------------------------------------------- students
def _tiny_student():
    from edg.train.students import build_student
    torch.manual_seed(0)
    return build_student("schnet", hidden_channels=8, num_filters=8, num_interactions=1, num_gaussians=8)


def test_old_student_checkpoint_resumes(tmp_path):
    from edg.train.loops.distill import FitConfig, train_student
    from edg.train.tasks import build_task
    task = build_task("rmd17:ethanol", root=ROOT, train_size=8, valid_size=4, test_size=4)
    fc = FitConfig(epochs=4, batch_size=4, eval_batch_size=8, lr=1e-3, seed=0)
    straight = train_student(task, _tiny_student(), fc, run_dir=tmp_path / "a")
    train_student(task, _tiny_student(), fc, run_dir=tmp_path / "b", stop_after=2)
    old = _make_old(tmp_path / "b", _old_student)
    assert set(old) == {"model", "optimizer", "scheduler", "mapper", "generator", "state"}
    resumed = train_student(task, _tiny_student(), fc, run_dir=tmp_path / "b")
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.test == pytest.approx(straight.test, rel=1e-5)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in straight.history],
                                                                       rel=1e-5)


# ---------------------------------------------------------------- representation study
def test_old_representation_checkpoint_resumes(tmp_path):
    from edg.train.configs import RepresentationConfig
    from edg.train.data.study import StudyData
    from edg.train.loops.representation import train_representation
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5, size=(12, 3)).astype(np.float64)
    pts = torch.as_tensor(rng.normal(size=(12, 32, 4)), dtype=torch.float32)
    targets = counts @ rng.normal(size=(3, 6)) + pts.mean(dim=(1, 2)).double().numpy()[:, None]
    data = StudyData([f"m{i}" for i in range(12)], [1, 6, 8], counts, targets, {"pointnet": pts})
    split = {"train": np.arange(8), "valid": np.arange(8, 10), "test": np.arange(10, 12)}
    cfg = RepresentationConfig(reps=("pointnet",), epochs=4, batch_size=4, checkpoint_every=2, atom_refs=False)
    straight = train_representation("pointnet", data, split, cfg, run_dir=tmp_path / "a")
    train_representation("pointnet", data, split, cfg, run_dir=tmp_path / "b", stop_after=2)
    _make_old(tmp_path / "b", _old_representation)
    resumed = train_representation("pointnet", data, split, cfg, run_dir=tmp_path / "b")
    assert len(resumed["history"]["valid_std_mae"]) == 5 and resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["history"]["train_loss"] == pytest.approx(straight["history"]["train_loss"], rel=1e-5)
    assert resumed["test_mae_hartree"] == pytest.approx(straight["test_mae_hartree"], rel=1e-5)


def test_unknown_or_newer_checkpoints_are_refused_in_one_line():
    with pytest.raises(CheckpointError, match="not an EDG training checkpoint"):
        upgrade_checkpoint({"weights": torch.zeros(1)}, "x.pt")
    with pytest.raises(CheckpointError, match="newer than this EDG"):
        upgrade_checkpoint({"format": "edg-run/99"}, "x.pt")
    assert math.isinf(upgrade_checkpoint({"stage": "teacher", "epoch": 0, "steps_per_epoch": 1, "model": {},
                                          "optimizer": {}, "scheduler": {}, "config": {}, "history": [
                                              {"epoch": 0, "train_loss": 1.0}]})["best"]["value"])
