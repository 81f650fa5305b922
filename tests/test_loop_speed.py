"""The loops' speed choices (issue 24, part 4): one loader kept across epochs with persistent workers (same
batches as a new loader per pass), and the CUDA-only choices (TF32, fused optimizers, channels_last, pinned
batches) shown on the CPU with a patched ``torch.cuda.is_available``: the choices are made; what runs, runs
for real on the CPU (a fused optimizer's step, a channels_last teacher)."""
from __future__ import annotations

import itertools
import logging

import pytest
import torch
from edg.train.configs import TEACHER_PRESETS, ImageEDTrainConfig, TeacherTrainConfig, imageed_preset
from edg.train.data.shards import ShardImages, collate, image_loader, pinned_collate, write_synthetic_shards
from edg.train.devices import resolve_device
from edg.train.loops import speed
from edg.train.loops.optim import adam_for, adamw, fused_kwargs, sgd
from edg.train.loops.pretrain import TrainBatches, _imageed_stage
from edg.train.models.imageed import ImageED
from edg.train.models.teacher import Teacher


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed_shards")
    write_synthetic_shards(out, size=32, maxcount=5, limit=10)  # 2 shards: one per worker
    return out


@pytest.fixture
def visible_gpu(monkeypatch):
    """What the loops see on a machine with a GPU (nothing is run on one)."""
    import edg.train.devices as devices
    monkeypatch.setattr(devices, "_said", set())
    monkeypatch.setattr(speed, "_said", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield resolve_device("auto")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _keys(batches):
    return [b["key"] for b in batches]


def test_one_loader_with_persistent_workers_gives_the_batches_of_a_loader_per_pass(shards):
    cfg = ImageEDTrainConfig(model=imageed_preset("tiny"), batch_size=3, shuffle_buffer=4, num_workers=2)
    stage = _imageed_stage(cfg, shards)
    steps = 3  # an epoch cuts a pass short (4 batches per pass of 10 samples in 2 workers)
    kept = TrainBatches(stage, cfg.batch_size, cfg.num_workers, rank=0)
    epochs = [list(itertools.islice(kept.endless(seed), steps)) for seed in (11, 12, 13)]
    workers = kept.loader._iterator._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)  # the same processes served every epoch
    for seed, got in zip((11, 12, 13), epochs):  # what the loop did before: a new loader each epoch
        fresh = image_loader(stage.dataset("train", seed), cfg.batch_size, cfg.num_workers)
        assert _keys(got) == _keys(itertools.islice(fresh, steps))
        assert all(torch.equal(a["edimg"], b["edimg"]) for a, b in zip(got, itertools.islice(fresh, steps)))
    assert _keys(epochs[0]) != _keys(epochs[1])  # each epoch reshuffled


def test_a_pass_longer_than_the_data_continues_with_the_next_pass(shards):
    cfg = ImageEDTrainConfig(model=imageed_preset("tiny"), batch_size=4, shuffle_buffer=0, num_workers=0)
    kept = TrainBatches(_imageed_stage(cfg, shards), cfg.batch_size, 0, rank=0)
    got = list(itertools.islice(kept.endless(5), 7))  # 3 batches per pass (4 + 4 + 2 samples)
    assert [len(b["key"]) for b in got] == [4, 4, 2, 4, 4, 2, 4]


def test_cuda_choices_with_a_visible_gpu(visible_gpu, caplog):
    device = visible_gpu
    assert device.type == "cuda"
    choices = speed.speed_choices(device, tf32=True, channels_last=True, loader_workers=4)
    assert (choices.tf32, choices.fused_optimizer, choices.channels_last, choices.compile) == (True, True, True, False)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with caplog.at_level(logging.INFO, logger="edg.train.loops.speed"):
        speed.apply_speed_choices(choices, "teacher")
        speed.apply_speed_choices(choices, "teacher")  # said once
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert [r.getMessage() for r in caplog.records] == [
        "teacher on cuda:0: TF32 on, fused optimizer on, torch.compile off, channels_last on, "
        "one loader kept across epochs (persistent workers)"]
    off = speed.speed_choices(device, tf32=False)
    speed.apply_speed_choices(off, "imageed")
    assert not torch.backends.cuda.matmul.allow_tf32


def test_cpu_choices():
    choices = speed.speed_choices("cpu", tf32=True, channels_last=True, compile=True)
    assert (choices.tf32, choices.fused_optimizer, choices.channels_last) == (False, False, False)
    assert choices.compile
    assert fused_kwargs("cpu") == {} and fused_kwargs(None) == {}
    model = torch.nn.Linear(3, 2)
    assert not adamw(model, 1e-3).defaults.get("fused") and not sgd(model, 1e-3).defaults.get("fused")


def test_fused_optimizers_for_cuda_run_and_match_the_default_kernels():
    """The optimizers the loops build for CUDA parameters are fused; the same fused kernels run on the CPU
    here and take the step the for-each kernels take."""
    assert fused_kwargs("cuda") == {"fused": True}
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused = adam_for(a.parameters(), 1e-2, device="cuda")
    plain = adam_for(b.parameters(), 1e-2, device="cpu")
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    x = torch.randn(16, 8)
    for model, opt in ((a, fused), (b, plain)):
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_pinned_batches_with_a_visible_gpu(visible_gpu, shards):
    ds = ShardImages(shards, "imageed", img_size=32, n_views=6)
    direct = image_loader(ds, 4, num_workers=0)
    assert direct.collate_fn is pinned_collate and not direct.pin_memory  # collated straight into pinned memory
    workers = image_loader(ds, 4, num_workers=2, persistent=True)
    assert workers.collate_fn is collate and workers.pin_memory and workers.persistent_workers


def test_teacher_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    teacher = Teacher(TEACHER_PRESETS["tiny"]).eval()
    x = torch.rand(2, 4, 3, 32, 32)
    with torch.no_grad():
        before = teacher(x)
        teacher.channels_last_()
        after = teacher(x)
    convs = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    for u, v in zip(before, after):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_configs_default_to_tf32_and_no_compile():
    from edg.train.configs import FitConfig, RepresentationConfig
    for cfg in (ImageEDTrainConfig(), TeacherTrainConfig(), FitConfig(), RepresentationConfig()):
        assert cfg.tf32 is True and cfg.compile is False


def test_compile_is_a_flag_of_every_training_command():
    """Opt-in from the command line: ``--compile`` sets the config field the loop reads (off by default)."""
    import argparse

    from edg.edg_core.config import add_config_args, apply_args
    from edg.train.configs import FitConfig, RepresentationConfig
    for cls in (ImageEDTrainConfig, TeacherTrainConfig, FitConfig, RepresentationConfig):
        p = argparse.ArgumentParser()
        add_config_args(p, cls)
        assert apply_args(cls(), p.parse_args(["--compile", "--no-tf32"])).compile is True, cls
        assert apply_args(cls(), p.parse_args(["--no-tf32"])).tf32 is False
        assert apply_args(cls(), p.parse_args([])).compile is False


def test_a_training_run_starts_one_worker_pool_for_all_its_epochs_and_says_its_choices_once(shards, tmp_path,
                                                                                             monkeypatch, caplog):
    """``train_imageed`` for 3 epochs (3 passes over the shards) with a loader worker: torch starts its worker
    processes once (a loader per epoch, or one without persistent workers, starts them every pass), and the
    speed choices are one log line."""
    from edg.train.loops.pretrain import train_imageed
    from torch.utils.data import dataloader
    starts = []
    start = dataloader._MultiProcessingDataLoaderIter.__init__

    def counted(self, loader):
        starts.append(loader)
        start(self, loader)
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", counted)
    monkeypatch.setattr(speed, "_said", set())
    cfg = ImageEDTrainConfig(model=imageed_preset("tiny"), epochs=3, warmup_epochs=0, batch_size=4, num_workers=1,
                             shuffle_buffer=4, val_fraction=0.0, checkpoint_every=0)
    with caplog.at_level(logging.INFO, logger="edg.train.loops.speed"):
        row = train_imageed(cfg, shards, tmp_path / "run", device="cpu")
    assert row["epoch"] == 3 and row["step"] == 9  # 3 epochs of 3 steps (10 samples, batch 4)
    assert len(starts) == 1 and starts[0].persistent_workers
    assert [r.getMessage() for r in caplog.records if r.name == speed.__name__] == [
        "imageed on cpu: TF32 off, fused optimizer off, torch.compile off, one loader kept across epochs "
        "(persistent workers)"]


def test_the_teacher_trains_in_channels_last_on_cuda_and_imageed_does_not(visible_gpu, shards):
    """What ``train_stage`` does with each stage's choices on a visible GPU (placed on the CPU here)."""
    import dataclasses

    from edg.train.loops.pretrain import _teacher_stage
    for stage, wanted in ((_teacher_stage(TeacherTrainConfig(model=TEACHER_PRESETS["tiny"]), shards), True),
                          (_imageed_stage(ImageEDTrainConfig(model=imageed_preset("tiny")), shards), False)):
        choices = speed.speed_choices(visible_gpu, channels_last=stage.channels_last)
        assert choices.channels_last is wanted
        model = speed.place_model(stage.model, dataclasses.replace(choices, device="cpu"))
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights) is wanted
        assert getattr(model, "channels_last", False) is wanted  # the teacher lays out its inputs too
    cpu = speed.speed_choices("cpu", channels_last=True)
    assert not speed.place_model(Teacher(TEACHER_PRESETS["tiny"]), cpu).channels_last  # CUDA only


def test_imageed_takes_uint8_batches_converted_on_the_device(shards):
    """A uint8 loader batch through ``to_device`` is what ImageED trains on (floats in [0, 1])."""
    from edg.train.data.shards import to_device
    batch = next(iter(image_loader(ShardImages(shards, "imageed", img_size=32, n_views=6), 2)))
    assert batch["edimg"].dtype == torch.uint8
    x = to_device(batch, "cpu")["edimg"]
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    out = ImageED(imageed_preset("tiny"))(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
