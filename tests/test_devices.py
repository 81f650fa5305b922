"""device: auto, the default of every training and inference command: CUDA when a GPU is visible, else the CPU,
said once; a run given GPUs by Ray sees them through the same check. Asking Ray for GPUs a cluster lacks is a
one-line error, not a wait. On this CPU machine, CUDA availability is stood in for by patching torch's query."""
from __future__ import annotations

import logging

import pytest
import torch
from edg.cluster.distill_runs import check_gpus
from edg.edg_core.errors import EDGError
from edg.train.configs import FitConfig, RepresentationConfig
from edg.train.devices import resolve_device


def test_auto_is_every_default():
    assert FitConfig().device == "auto" and RepresentationConfig().device == "auto"
    import inspect

    from edg.train.io.ase_calculator import EDGCalculator
    from edg.train.io.predict import load_student, predict_file
    for fn in (load_student, predict_file, EDGCalculator.__init__):
        assert inspect.signature(fn).parameters["device"].default == "auto", fn


def test_auto_picks_cpu_without_a_gpu_and_says_so_once(monkeypatch, caplog):
    import edg.train.devices as devices
    monkeypatch.setattr(devices, "_said", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="edg.train.devices"):
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")
    assert [r.getMessage() for r in caplog.records] == ["device: cpu (auto: no CUDA GPU is visible)"]


def test_auto_picks_the_visible_gpu(monkeypatch):
    import edg.train.devices as devices
    monkeypatch.setattr(devices, "_said", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # what a Ray task sees of its GPU
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit choice is kept


def test_asking_for_gpus_a_cluster_lacks_is_one_line():
    check_gpus(0.0, {"CPU": 2.0})
    check_gpus(0.25, {"CPU": 2.0, "GPU": 1.0})
    with pytest.raises(EDGError) as e:
        check_gpus(1.0, {"CPU": 2.0})
    assert "--gpus-per-run 1" in str(e.value) and "0 GPUs" in str(e.value) and "\n" not in str(e.value)
