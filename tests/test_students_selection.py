"""The authors' ViSNet model selection (``FitConfig.select_ema``, ``early_stopping_patience``): the validation
loss with its energy term an EMA over validation batches (seeded by a two-batch sanity check, carried across
epochs and resumes), best epoch and plateau on it, early stopping after ``patience`` epochs without improvement."""
from __future__ import annotations

import math

import pytest
import torch
from edg.train.configs import FitConfig
from edg.train.loops.distill import evaluate, train_student
from edg.train.loops.student_schedule import LossEMA, StudentSchedule
from edg.train.paper_settings import resolve
from edg.train.students import build_student
from edg.train.tasks import build_task


def test_ema_over_batches_is_the_authors_rule():
    ema = LossEMA(0.05)
    assert ema.update([4.0, 2.0]) == pytest.approx([4.0, 0.05 * 2.0 + 0.95 * 4.0])  # the first batch seeds it
    prev = ema.value
    assert ema.update([1.0]) == pytest.approx([0.05 * 1.0 + 0.95 * prev])  # carried into the next call
    with pytest.raises(ValueError, match="select_ema"):
        LossEMA(0.0)


def test_epoch_loss_is_the_batch_mean_of_smoothed_energy_plus_forces():
    s = StudentSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), FitConfig(
        select_ema=0.5, scheduler="none", epochs=1))
    assert s.ema_loss([2.0, 4.0, 0.0], [1.0, 1.0, 1.0]) == pytest.approx(((2 + 1) + (3 + 1) + (1.5 + 1)) / 3)
    assert s.state_dict()["ema"] == pytest.approx(1.5)
    fresh = StudentSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), FitConfig(
        select_ema=0.5, scheduler="none", epochs=1))
    fresh.load_state_dict(s.state_dict())
    assert fresh.ema.value == pytest.approx(1.5)


def test_early_stopping_rule():
    def schedule(patience):
        return StudentSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), FitConfig(
            early_stopping_patience=patience, scheduler="none", epochs=1))
    s = schedule(3)
    assert not s.should_stop(0, 0, None)
    assert not s.should_stop(5, 3, 1.0)  # 2 epochs without improvement
    assert s.should_stop(6, 3, 1.0)  # 3
    assert s.should_stop(1, 0, math.nan) and s.should_stop(2, 1, math.inf)  # Lightning's check_finite
    assert not schedule(0).should_stop(100, 1, 1.0) and not schedule(None).should_stop(100, 1, math.nan)


def test_visnet_paper_settings_select_with_the_ema_and_stop_early():
    fit, _, _ = resolve("visnet", "rmd17:aspirin", FitConfig())
    assert (fit.select_ema, fit.early_stopping_patience) == (0.05, 600)
    fit, _, _ = resolve("schnet", "rmd17:aspirin", FitConfig())
    assert (fit.select_ema, fit.early_stopping_patience) == (0.0, 0)  # Geom3D: the task metric, no early stop
    fit, _, _ = resolve("visnet", "rmd17:aspirin", FitConfig(select_ema=0.0, early_stopping_patience=0))
    assert (fit.select_ema, fit.early_stopping_patience) == (0.0, 0)  # a user can turn them off


@pytest.fixture(scope="module")
def task():
    # the embedded sample's 4 validation frames; in batches of 1 (_fit): four batches per validation
    return build_task("rmd17:ethanol", root="embedded", train_size=4, test_size=2)


def _model():
    torch.manual_seed(0)
    return build_student("schnet", hidden_channels=8, num_filters=8, num_interactions=1, num_gaussians=8,
                         cutoff=5.0)


def _fit(**kw) -> FitConfig:
    return FitConfig(**{**dict(batch_size=2, eval_batch_size=1, lr=0.0, loss="mse", scheduler="none", seed=0,
                               num_threads=1), **kw})


def test_selection_uses_the_ema_loss_seeded_by_the_sanity_batches(task):
    """lr 0: the model never changes, so every validation has the same per-batch terms; the selected value must
    be the EMA over [2 sanity batches, 4 batches of epoch 1, 4 of epoch 2, ...], averaged per epoch."""
    model = _model()
    res = train_student(task, model, _fit(epochs=3, select_ema=0.3))
    terms: dict[str, list[float]] = {}
    evaluate(task, model, task.valid, 1, terms)
    assert len(terms["energy"]) == 4
    ema, expected = None, []
    for e in terms["energy"][:2]:  # the sanity check
        ema = e if ema is None else 0.3 * e + 0.7 * ema
    for _ in range(3):
        losses = []
        for e, f in zip(terms["energy"], terms["forces"]):
            ema = 0.3 * e + 0.7 * ema
            losses.append(ema + f)
        expected.append(sum(losses) / 4)
    got = [h["valid_ema_loss"] for h in res.history]
    assert got == pytest.approx(expected, rel=1e-9)
    assert res.select_metric == "ema_loss"
    best = min(range(3), key=lambda i: (got[i], i)) + 1
    assert res.best_epoch == best and res.valid["ema_loss"] == pytest.approx(got[best - 1])
    # the plain per-frame metric differs from the authors' loss: the selection is not the task metric
    assert all(abs(h["valid_ema_loss"] - h["valid_weighted_mse"]) > 1e-6 for h in res.history)


def test_early_stopping_ends_a_plateau_after_patience_epochs(task):
    """select_ema 1: the EMA is the newest batch, so with lr 0 every epoch has the same loss; epoch 1 is the
    best and patience 2 stops the run after epoch 3 of 10."""
    res = train_student(task, _model(), _fit(epochs=10, select_ema=1.0, early_stopping_patience=2))
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.best_epoch == 1
    assert len({h["valid_ema_loss"] for h in res.history}) == 1
    # without early stopping the same run trains all its epochs
    res = train_student(task, _model(), _fit(epochs=4, select_ema=1.0))
    assert len(res.history) == 4


def test_a_resumed_run_continues_the_ema_and_the_early_stop(task, tmp_path):
    kw = dict(epochs=6, select_ema=0.3, early_stopping_patience=2, lr=1e-3, scheduler="plateau", plateau_patience=1)
    whole = train_student(task, _model(), _fit(**kw))
    train_student(task, _model(), _fit(**kw), run_dir=tmp_path, stop_after=2)
    resumed = train_student(task, _model(), _fit(**kw), run_dir=tmp_path)
    for a, b in zip(resumed.history, whole.history, strict=True):
        for k in ("valid_ema_loss", "lr", "train_loss", "valid_weighted_mse"):
            assert a[k] == pytest.approx(b[k], rel=1e-6), (a["epoch"], k)
    assert resumed.best_epoch == whole.best_epoch


def test_a_stopped_run_stays_stopped_when_resumed(task, tmp_path):
    kw = dict(epochs=10, select_ema=1.0, early_stopping_patience=2, checkpoint_every=1)
    train_student(task, _model(), _fit(**kw), run_dir=tmp_path, stop_after=2)
    res = train_student(task, _model(), _fit(**kw), run_dir=tmp_path)  # resumes at 3, stops after it
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.best_epoch == 1
    again = train_student(task, _model(), _fit(**kw), run_dir=tmp_path)  # nothing left to train
    assert [h["epoch"] for h in again.history] == [1, 2, 3] and again.best_epoch == 1
