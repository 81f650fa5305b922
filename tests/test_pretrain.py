"""Pretraining loops: schedules, checkpoint/resume, validation split, the teacher on F_U, Ray Train."""
import json
import math

import pytest
import torch
from edg.edg_core.errors import EDGError
from edg.edg_core.io import read_jsonl
from edg.train.data.shards import count_samples, in_validation, write_synthetic_shards
from edg.train.io.checkpoint import Checkpoints, load_checkpoint
from edg.train.io.model_files import load_ed_predictor, load_imageed
from edg.train.loops.optim import scaled_lr, warmup_cosine
from edg.train.loops.pretrain import ImageEDTrainConfig, TeacherTrainConfig, train_imageed, train_teacher
from edg.train.models.imageed import imageed_preset
from edg.train.models.teacher import TEACHER_PRESETS


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_shards")
    write_synthetic_shards(out, size=32, maxcount=8, limit=24)  # 3 shards
    return out


def _imageed_cfg(**kw):
    base = dict(model=imageed_preset("tiny"), epochs=2, warmup_epochs=1, batch_size=8, num_workers=0, lr=1e-3,
                shuffle_buffer=16, checkpoint_every=1)
    return ImageEDTrainConfig(**{**base, **kw})


def test_schedule_and_lr_rule():
    assert scaled_lr(1.5e-4, 512) == pytest.approx(3e-4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4 + 4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs == sorted(lrs[:4]) + sorted(lrs[4:], reverse=True)


def test_validation_split_is_stable():
    keys = [f"qm9:{i}" for i in range(4000)]
    held = [k for k in keys if in_validation(k, 0.02)]
    assert 40 < len(held) < 120
    assert held == [k for k in keys if in_validation(k, 0.02)]
    assert set(held) <= {k for k in keys if in_validation(k, 0.1)}


def test_resume_takes_the_same_next_step(shards, tmp_path):
    cfg = _imageed_cfg()
    straight = train_imageed(cfg, shards, tmp_path / "straight")

    class Crash(Exception):
        pass

    def crash_after_first_epoch(metrics, ckpt_file):
        assert ckpt_file is not None and ckpt_file.name == f"epoch-{metrics['epoch']:06d}.pt"  # epochs count from 1
        assert ckpt_file.exists()
        if metrics["epoch"] == 1:
            raise Crash
    with pytest.raises(Crash):
        train_imageed(cfg, shards, tmp_path / "resumed", report=crash_after_first_epoch)
    assert not (tmp_path / "resumed" / "imageed.pt").exists()
    resumed = train_imageed(cfg, shards, tmp_path / "resumed")
    assert resumed["epoch"] == 2 and resumed["step"] == straight["step"] == 2 * math.ceil(24 / 8)
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    a, b = load_imageed(tmp_path / "straight"), load_imageed(tmp_path / "resumed")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7, msg=name)
    lines = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [1, 2]
    # a finished run resumes to nothing: no more steps, same result
    again = train_imageed(cfg, shards, tmp_path / "resumed")
    assert again == resumed
    assert [p.name for p in Checkpoints(tmp_path / "resumed" / "checkpoint").files()] == ["epoch-000002.pt"]
    ck = load_checkpoint(tmp_path / "resumed" / "checkpoint" / "epoch-000002.pt")
    assert set(ck) >= {"model", "optimizer", "scheduler", "epoch", "config", "history"}
    with pytest.raises(EDGError, match="stage 'imageed'"):
        train_teacher(TeacherTrainConfig(model=TEACHER_PRESETS["tiny"], num_workers=0), shards,
                      tmp_path / "resumed")


def test_imageed_validation_and_figure(shards, tmp_path):
    cfg = _imageed_cfg(epochs=1, warmup_epochs=0, val_fraction=0.25, figure_every=1)
    m = train_imageed(cfg, shards, tmp_path)
    n_val = count_samples(shards, "valid", 0.25)
    assert 0 < n_val < 24 and m["step"] == math.ceil((24 - n_val) / 8)
    assert math.isfinite(m["valid_loss"]) and m["valid_loss"] > 0
    png = tmp_path / "figures" / "reconstruction-0001.png"
    assert png.stat().st_size > 0
    assert json.loads(json.dumps(m)) == m  # plain numbers for the reports
    # the same panels in TensorBoard, beside the losses
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    assert "valid/loss" in {t.split(" ")[0] for t in ea.Tags()["scalars"]}
    (event,) = ea.Images("images/reconstruction")
    assert event.step == 1 and (event.width, event.height) == Image.open(png).size


def test_teacher_learns_fu(shards, tmp_path):
    from edg.cluster.stages import run_extract
    from edg.train.models.imageed import ImageED
    torch.manual_seed(0)
    run_extract("imageed", ImageED(imageed_preset("tiny")), shards, tmp_path / "fu")
    cfg = TeacherTrainConfig(model=TEACHER_PRESETS["tiny"], epochs=6, batch_size=8, lr=0.05, num_workers=0,
                             val_fraction=0.0, shuffle_buffer=16)
    train_teacher(cfg, tmp_path / "fu", tmp_path / "run")
    hist = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert all(h["train_with_fu"] == 1.0 for h in hist)
    edp = load_ed_predictor(tmp_path / "run" / "teacher.pt")
    assert edp(torch.zeros(1, 512)).shape == (1, 64)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_two_cpu_workers(shards, tmp_path):
    pytest.importorskip("ray")
    import shutil
    import tempfile

    from edg.cluster.runtime import ray_session
    from edg.cluster.train_ray import run_pretraining
    ray_tmp = tempfile.mkdtemp(prefix="edgr", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    try:  # EDG's private runtime: loopback, its own token (a bare ray.init() writes ~/.ray/auth_token)
        with ray_session("local", temp_dir=ray_tmp, num_cpus=4):
            cfg = _imageed_cfg(epochs=1, warmup_epochs=0, batch_size=4, val_fraction=0.25)  # uneven rank shares
            result = run_pretraining("imageed", cfg, shards, tmp_path / "out", num_workers=2,
                                     storage_path=tmp_path / "storage")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.error is None
    n_train = count_samples(shards, "train", 0.25)
    assert result.metrics["epoch"] == 1 and result.metrics["step"] == math.ceil(n_train / (4 * 2))
    assert math.isfinite(result.metrics["valid_loss"])
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as d:
        ck = torch.load(f"{d}/checkpoint.pt", weights_only=True)
    assert ck["name"] == "imageed" and ck["epoch"] == 1
    assert (tmp_path / "out" / "imageed.pt").exists()
    # rank 0 keeps the run folder's per-epoch files as in a local run
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["state"] == "done"
    assert len((tmp_path / "out" / "metrics.csv").read_text().splitlines()) == 2
