"""The one epoch loop (train/loops/epoch_loop.py) on a model small enough to check by hand: epochs count from 1 in
every file it writes, an interrupted run resumes to the uninterrupted result, and the best epoch is the one with
the lowest selection metric."""
from __future__ import annotations

import json

import pytest
import torch
from edg.edg_core.io import read_jsonl
from edg.train.io.checkpoint import Checkpoints, load_checkpoint
from edg.train.loops.epoch_loop import LoopConfig, ModelSteps, find_checkpoint, run_epochs
from edg.train.loops.run_state import CHECKPOINT_FORMAT, RunState


def _linear_fit(run_dir, epochs=5, stop_after=None, checkpoint_every=2):
    """y = 3 x on 16 points, batch 4, SGD with a step schedule; validation = MSE on 4 held-out points, which
    is made to rise after epoch 3 (a shifted target) so the best epoch is not the last."""
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 20)[:, None]
    y = 3 * x
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=8, gamma=0.5)
    state = RunState(model, opt, sched, torch.Generator().manual_seed(1))
    loop = LoopConfig("linear", epochs, 4, 4, torch.device("cpu"), run_dir, checkpoint_every=checkpoint_every,
                      keep_last=2, stop_after=stop_after, config={"lr": 0.1})
    ck = find_checkpoint(loop)
    if ck is not None:
        state.restore(ck)

    def batches(k):
        order = torch.randperm(16, generator=state.generator)
        return (order[i:i + 4] for i in range(0, 16, 4))

    def step(idx):
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.detach()}, len(idx)

    def evaluate(k):
        with torch.no_grad():
            shift = 0.0 if k <= 3 else 0.5 * (k - 3)
            return {"valid_mse": float(torch.nn.functional.mse_loss(model(x[16:]), y[16:] + shift))}
    steps = ModelSteps(batches, step, evaluate, select_metric="valid_mse", keep_best_weights=True,
                       on_best=lambda k, row: {"seen_at": k})
    return run_epochs(state, steps, loop)


def test_epochs_count_from_one_everywhere(tmp_path):
    state = _linear_fit(tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] == [r["epoch"] for r in state.history]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20]
    assert json.loads((tmp_path / "progress.json").read_text())["epoch"] == 5
    files = Checkpoints(tmp_path / "checkpoint").files()
    assert [p.name for p in files] == ["epoch-000004.pt", "epoch-000005.pt"]  # every 2 and the last, keep 2
    ck = load_checkpoint(files[-1])
    assert ck["format"] == CHECKPOINT_FORMAT and ck["epoch"] == 5 and ck["name"] == "linear"
    assert ck["config"] == {"lr": 0.1} and len(ck["history"]) == 5
    # the best epoch is the lowest validation MSE, with the weights of that epoch
    best_k = min(rows, key=lambda r: r["valid_mse"])["epoch"]
    assert state.best.epoch == best_k <= 3 and state.best.extra == {"seen_at": best_k}
    assert state.best.value == pytest.approx(rows[best_k - 1]["valid_mse"])
    assert not torch.equal(state.best.weights["weight"], state.model.state_dict()["weight"])


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path):
    straight = _linear_fit(tmp_path / "a")
    _linear_fit(tmp_path / "b", stop_after=3)  # checkpoint after epoch 2; epoch 3 is logged, then lost
    assert len(read_jsonl(tmp_path / "b" / "metrics.jsonl")) == 3
    resumed = _linear_fit(tmp_path / "b")
    assert [r["epoch"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6) and a["lr"] == b["lr"]
    assert resumed.best.epoch == straight.best.epoch and resumed.best.extra == straight.best.extra
    torch.testing.assert_close(resumed.model.state_dict(), straight.model.state_dict())
    again = _linear_fit(tmp_path / "b")  # finished: nothing left to train
    assert again.epoch == 5 and again.history == resumed.history
