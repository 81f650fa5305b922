"""The training loops' shared conventions. Plain-data checkpoints: a pickle payload in any file a loader reads
never runs; the keep-last / every-k policy; the per-epoch files (metrics.jsonl, metrics.csv, progress.json)
written during a run; no host sync per student step."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from edg.cluster.cli import main
from edg.train.data.shards import write_synthetic_shards
from edg.train.io.checkpoint import (
    CheckpointError,
    Checkpoints,
    check_plain,
    load_checkpoint,
    model_file,
    save_checkpoint,
)
from edg.train.io.model_files import imageed_state, load_ed_predictor, load_imageed, load_teacher
from edg.train.loops.pretrain import ImageEDTrainConfig, TeacherTrainConfig, train_imageed, train_teacher
from edg.train.models.imageed import ImageED, imageed_preset
from edg.train.models.teacher import TEACHER_PRESETS

ROOT = "/work/shared/data/rmd17"


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile(path, marker, **plain):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**plain, "model": _Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt_shards")
    write_synthetic_shards(out, size=32, maxcount=12, limit=24)
    return out


def _refused(call, marker, match="never unpickles in full"):
    with pytest.raises(CheckpointError, match=match) as e:
        call()
    assert not marker.exists(), "the pickle payload ran"
    return str(e.value)


def test_model_loaders_refuse_pickle_payloads(tmp_path):
    from edg.train.io.model_files import build_ed_predictor
    from edg.train.loops.distill import load_student_state
    marker = tmp_path / "ran"
    f = _hostile(tmp_path / "x.pt", marker, imageed_config={}, teacher_config={}, ed_predictor={})
    msg = _refused(lambda: load_imageed(f), marker)
    assert str(f) in msg and "posix.system" in msg  # names the file and what it would have run
    _refused(lambda: load_teacher(f), marker)
    _refused(lambda: load_ed_predictor(f), marker)
    _refused(lambda: build_ed_predictor(str(f)), marker)
    _refused(lambda: load_student_state(f), marker)
    run = tmp_path / "run"  # run folders resolve to their files, which are checked as well
    _hostile(run / "imageed.pt", marker)
    _hostile(run / "teacher.pt", marker)
    _hostile(run / "best_student.pt", marker)
    _refused(lambda: load_imageed(run), marker)
    _refused(lambda: load_teacher(run), marker)
    _refused(lambda: load_student_state(run), marker)


def test_every_loader_finds_a_run_folders_model_file_in_the_same_order(tmp_path):
    """The export, else checkpoint/best.pt, else the newest epoch file, else an older checkpoint/checkpoint.pt;
    a student run folder means best_student.pt only. Each loader reads the file model_file picks (its error
    names that file) and a folder with none names the folder and the export."""
    from edg.train.loops.distill import load_student_state
    run = tmp_path / "run"
    ck = run / "checkpoint"
    for name in ("checkpoint.pt", "epoch-000002.pt", "epoch-000010.pt", "best.pt"):
        save_checkpoint({"which": name}, ck / name)
    save_checkpoint({"which": "export"}, run / "teacher.pt")
    assert model_file(run, "teacher.pt") == run / "teacher.pt"
    assert model_file(run, "imageed.pt") == ck / "best.pt"  # another stage's export does not count
    no_export = _only(run, "best.pt", "epoch-000002.pt", "epoch-000010.pt")
    for loader in (load_imageed, load_teacher, load_ed_predictor):
        with pytest.raises(Exception, match=r"best\.pt: not a"):  # the loader read best.pt, not an epoch file
            loader(no_export)
    (ck / "best.pt").unlink()
    assert model_file(run, "imageed.pt") == ck / "epoch-000010.pt"  # the newest by epoch, not by name order
    for f in Checkpoints(ck).files():
        f.unlink()
    assert model_file(run, "imageed.pt") == ck / "checkpoint.pt"
    assert model_file(run / "teacher.pt", "imageed.pt") == run / "teacher.pt"  # a file is itself
    with pytest.raises(CheckpointError, match="no best_student.pt in this distillation run folder"):
        model_file(run, "best_student.pt", "distillation", checkpoints=False)  # checkpoints are not weights
    (tmp_path / "empty" / "checkpoint").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'empty'}: no imageed.pt and no checkpoint"):
        load_imageed(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no teacher.pt and no checkpoint"):
        load_teacher(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'empty'}: no best_student.pt"):
        load_student_state(tmp_path / "empty")
    save_checkpoint({"w": torch.ones(1)}, tmp_path / "empty" / "best_student.pt")
    assert torch.equal(load_student_state(tmp_path / "empty")["w"], torch.ones(1))


def _only(run, *names):
    """A copy of ``run`` whose checkpoint folder holds only ``names`` (no export)."""
    out = run.parent / ("only-" + "-".join(n.split(".")[0] for n in names))
    (out / "checkpoint").mkdir(parents=True, exist_ok=True)
    for n in names:
        (out / "checkpoint" / n).write_bytes((run / "checkpoint" / n).read_bytes())
    return out


def test_older_checkpoints_with_numpy_values_and_paths_load_and_nothing_else_does(tmp_path):
    """Files of older EDG versions held numpy metrics and paths in their configs: they load (those types only
    build values); an object beside them that would run code is still refused."""
    import pathlib
    old = {"model": {"w": torch.ones(2)}, "config": {"out": pathlib.Path("/runs/x"), "lr": np.float64(1e-3)},
           "history": [{"loss": np.float32(0.5), "per_view": np.arange(3, dtype=np.int64)}]}
    torch.save(old, tmp_path / "old.pt")
    back = load_checkpoint(tmp_path / "old.pt")
    assert back["config"]["out"] == pathlib.Path("/runs/x") and back["config"]["lr"] == 1e-3
    assert back["history"][0]["per_view"].tolist() == [0, 1, 2] and torch.equal(back["model"]["w"], torch.ones(2))
    marker = tmp_path / "ran"
    _hostile(tmp_path / "mixed.pt", marker, **old)
    msg = _refused(lambda: load_checkpoint(tmp_path / "mixed.pt"), marker)
    assert "posix.system" in msg


def test_plain_files_load_and_bad_files_are_clear_errors(tmp_path):
    model = ImageED(imageed_preset("tiny"))
    save_checkpoint(imageed_state(model), tmp_path / "imageed.pt")
    back = load_imageed(tmp_path / "imageed.pt")
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    (tmp_path / "cut.pt").write_bytes((tmp_path / "imageed.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_imageed(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match=r"x\.errors: a numpy\.ndarray is not plain data"):
        check_plain({"x": {"errors": np.zeros(3)}}, "x")
    with pytest.raises(CheckpointError, match="not plain data"):
        save_checkpoint({"f": lambda: 0}, tmp_path / "f.pt")
    assert not (tmp_path / "f.pt").exists()


def test_cli_refuses_a_pickle_payload_with_a_clear_error(tmp_path, shards, capsys):
    marker = tmp_path / "ran"
    f = _hostile(tmp_path / "evil.pt", marker, imageed_config={})
    argv = ["extract", "imageed-features", "--model", str(f), "--shards", str(shards), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "can run code" in err and not marker.exists()
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["extract", "imageed-features", "--help"])
    assert "pickle" not in capsys.readouterr().out  # no switch that would unpickle in full


def _imageed_cfg(**kw):
    base = dict(model=imageed_preset("tiny"), epochs=3, warmup_epochs=0, batch_size=4, num_workers=0, lr=1e-3,
                shuffle_buffer=8, checkpoint_every=1)
    return ImageEDTrainConfig(**{**base, **kw})


def test_pretraining_resume_refuses_pickle_payloads(tmp_path, shards):
    marker = tmp_path / "ran"
    _hostile(tmp_path / "i" / "checkpoint" / "epoch-000001.pt", marker, stage="imageed")
    _refused(lambda: train_imageed(_imageed_cfg(), shards, tmp_path / "i"), marker)
    _hostile(tmp_path / "t" / "checkpoint" / "epoch-000001.pt", marker, stage="teacher")
    cfg = TeacherTrainConfig(model=TEACHER_PRESETS["tiny"], epochs=1, batch_size=4, num_workers=0)
    _refused(lambda: train_teacher(cfg, shards, tmp_path / "t"), marker)
    _hostile(tmp_path / "r" / "checkpoint" / "epoch-000002.pt", marker)  # a Ray Train resume file
    _refused(lambda: train_imageed(_imageed_cfg(), shards, tmp_path / "r2",
                                   resume_from=tmp_path / "r" / "checkpoint" / "epoch-000002.pt"), marker)


def test_student_step_leaves_losses_on_the_device():
    """train_step returns detached tensors (summed on the device, read once per epoch), not Python floats,
    whose .item() would wait for the device after every step."""
    from edg.train.loops.distill import train_step
    from edg.train.students import build_student
    from edg.train.tasks import build_task
    task = build_task("rmd17:ethanol", root=ROOT, train_size=8, valid_size=4, test_size=4)
    torch.manual_seed(0)
    model = build_student("schnet", hidden_channels=8, num_filters=8, num_interactions=1, num_gaussians=8)
    batch = next(iter(task.train.batches(4)))
    out = train_step(task, model.train(), batch, torch.optim.Adam(model.parameters(), lr=1e-3))
    assert set(out) == {"loss", "task_loss", "ed_loss"}
    for k, v in out.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k
    assert float(out["loss"]) > 0 and float(out["ed_loss"]) == 0.0


def test_student_resume_refuses_pickle_payloads(tmp_path):
    from edg.train.loops.distill import FitConfig, train_student
    from edg.train.students import build_student
    from edg.train.tasks import build_task
    task = build_task("rmd17:ethanol", root=ROOT, train_size=8, valid_size=4, test_size=4)
    marker = tmp_path / "ran"
    _hostile(tmp_path / "run" / "checkpoint" / "epoch-000001.pt", marker)
    model = build_student("schnet", hidden_channels=8, num_filters=8, num_interactions=1, num_gaussians=8)
    _refused(lambda: train_student(task, model, FitConfig(epochs=2, batch_size=4), run_dir=tmp_path / "run"),
             marker)


def _study(n=12, points=32, seed=0):
    from edg.train.data.study import StudyData
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, size=(n, 3)).astype(np.float64)
    pts = torch.as_tensor(rng.normal(size=(n, points, 4)), dtype=torch.float32)
    targets = counts @ rng.normal(size=(3, 6)) + pts.mean(dim=(1, 2)).double().numpy()[:, None]
    return StudyData([f"m{i}" for i in range(n)], [1, 6, 8], counts, targets, {"pointnet": pts})


def test_representation_resumes_and_refuses_pickle_payloads(tmp_path):
    from edg.train.configs import RepresentationConfig
    from edg.train.loops.representation import train_representation
    data = _study()
    split = {"train": np.arange(8), "valid": np.arange(8, 10), "test": np.arange(10, 12)}
    cfg = RepresentationConfig(reps=("pointnet",), epochs=4, batch_size=4, checkpoint_every=2, atom_refs=False)
    straight = train_representation("pointnet", data, split, cfg, run_dir=tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoint").exists()  # finished: nothing left to resume
    train_representation("pointnet", data, split, cfg, run_dir=tmp_path / "b", stop_after=3)
    assert [p.name for p in Checkpoints(tmp_path / "b" / "checkpoint").files()] == ["epoch-000002.pt"]
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3
    resumed = train_representation("pointnet", data, split, cfg, run_dir=tmp_path / "b")
    assert [r["epoch"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())] \
        == [1, 2, 3, 4]  # epoch 3, logged after the checkpoint, was trained again and logged once
    assert resumed["history"]["train_loss"] == pytest.approx(straight["history"]["train_loss"], rel=1e-5)
    assert resumed["test_mae_hartree"] == pytest.approx(straight["test_mae_hartree"], rel=1e-5)
    marker = tmp_path / "ran"
    _hostile(tmp_path / "c" / "checkpoint" / "epoch-000002.pt", marker)
    _refused(lambda: train_representation("pointnet", data, split, cfg, run_dir=tmp_path / "c"), marker)


def test_keep_last_and_every(tmp_path):
    ck = Checkpoints(tmp_path, every=3, keep_last=2)
    due = [e for e in range(1, 11) if ck.due(e, 10)]
    assert due == [3, 6, 9, 10]  # every 3 epochs and after the last
    for e in due:
        ck.save({"epoch": e, "w": torch.full((2,), float(e))}, e)
    assert [p.name for p in ck.files()] == ["epoch-000009.pt", "epoch-000010.pt"]
    assert ck.load_latest()["epoch"] == 10
    assert Checkpoints(tmp_path, every=0).due(9, 10) is False and Checkpoints(tmp_path, every=0).due(10, 10)
    with pytest.raises(CheckpointError, match="keep_last >= 1"):
        Checkpoints(tmp_path, keep_last=0)
    ck.save_best({"w": torch.zeros(1)})
    ck.clear()
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_imageed_run_talks_and_writes_files_during_the_run(tmp_path, shards, capfd):
    """Without a TTY: a start-up estimate and a line per epoch with units; progress.json and metrics.csv are
    current when each epoch is reported; the default policy keeps one resumable checkpoint plus best.pt."""
    seen = []

    def report(metrics, ckpt):
        prog = json.loads((tmp_path / "progress.json").read_text())
        rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
        seen.append((prog["epoch"], prog["epochs"], prog["state"], len(rows), ckpt.name if ckpt else None))
    cfg = _imageed_cfg(checkpoint_every=2, keep_last=1, val_fraction=0.25)
    train_imageed(cfg, shards, tmp_path, report=report)
    assert seen == [(1, 3, "running", 1, None), (2, 3, "running", 2, "epoch-000002.pt"),
                    (3, 3, "done", 3, "epoch-000003.pt")]
    assert [p.name for p in Checkpoints(tmp_path / "checkpoint").files()] == ["epoch-000003.pt"]
    best = load_checkpoint(tmp_path / "checkpoint" / "best.pt")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert best["valid_loss"] == min(r["valid_loss"] for r in rows) and "imageed_config" in best
    err = capfd.readouterr().err
    assert "per epoch" in err and "for the 3 epochs left" in err  # the start-up estimate
    lines = [x for x in err.splitlines() if x.startswith("imageed epoch ")]
    assert len(lines) == 3 and lines[0].startswith("imageed epoch 1/3")
    assert all("valid loss" in x and "(normalised-pixel MSE)" in x and "samples/s" in x and "ETA" in x and " lr "
               in x for x in lines)
    prog = json.loads((tmp_path / "progress.json").read_text())
    assert prog["eta_s"] == 0 and math.isfinite(prog["last"]["train_loss"])


def _csv_of(rows):
    """metrics.csv as a full rewrite makes it: one column per key, in order of first use."""
    import io
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
    return buf.getvalue()


def test_metrics_csv_is_appended_and_rewritten_only_for_a_new_column(tmp_path, monkeypatch):
    """Each epoch appends a line to metrics.csv; the file is rewritten only when a row brings a new key (and for
    the first row of a process); its text is always what a full rewrite gives, header included."""
    import edg.train.io.progress as progress
    from edg.train.io.progress import TrainLog
    rewrites = []
    real = progress.write_bytes_atomic
    monkeypatch.setattr(progress, "write_bytes_atomic",
                        lambda path, data: (rewrites.append(Path(path).name), real(path, data))[1])
    rows = [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3} for e in range(1, 9)]
    rows[2].update(test_mae=0.5, extra={"a": [1, 2]})  # new columns mid-run (a dict is written as JSON)
    rows[4].update(test_mae=0.25)
    log = TrainLog(tmp_path, "x", 8, quiet=True)
    rewrites.clear()
    for k, r in enumerate(rows[:6]):
        log.epoch(r, 0.1, k + 1)
        assert (tmp_path / "metrics.csv").read_text() == _csv_of(rows[:k + 1])
    assert rewrites.count("metrics.csv") == 2  # epoch 1 (first of this process) and epoch 3 (new columns)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,lr,test_mae,extra"
    # a resumed process after epoch 6 rewrites once, then appends
    rewrites.clear()
    log = TrainLog(tmp_path, "x", 8, start_epoch=6, quiet=True)
    for k, r in enumerate(rows[6:], start=6):
        log.epoch(r, 0.1, k + 1)
    assert rewrites.count("metrics.csv") == 1
    assert (tmp_path / "metrics.csv").read_text() == _csv_of(log.rows)  # earlier rows as metrics.jsonl holds them
    assert [r["epoch"] for r in csv.DictReader((tmp_path / "metrics.csv").open())] == [str(e) for e in range(1, 9)]
