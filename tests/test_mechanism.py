"""The EDG mechanism, in the real distillation loop (train.loops.distill.run_distill): teacher targets that carry
information about the label are fitted well below the best constant target, and noise targets are not.

Set-up (small, seeded): SchNet 32 wide on the embedded rMD17 ethanol frames (16 training frames), energy loss
only (output on the energy's scale: the task options energy_weight, force_weight, energy_scale), lambda 1, with
teacher targets written as the loop reads them (an .npz of ids and F_S; EDP(F_S) by the seeded ED predictor).
Informative: F_S = (standardised true energy) x a fixed random 512-vector + small noise. Noise: iid Gaussian
F_S with the same per-feature variance. The yardstick is the best constant target: the one vector c minimising
mean SmoothL1(c, EDP(F_S)) over the training frames, the lowest L_ED a student that knows nothing of the
molecule can reach. L_ED is the loop's own training ed_loss (metrics.jsonl), averaged over the last 5 epochs.

Measured here (2-core box at load ~12, 60 epochs, ~12 s per run): L_ED / best constant, informative vs noise,
seed 1: 0.54 vs 0.95; seed 2: 0.44 vs 0.94; seed 3: 0.46 vs 0.89 (16 frames leave a few per cent of the noise to
memorise in-sample, hence the tolerance). A probe with the paper's 0.05/0.95 energy/force weights gave 0.61 vs
0.98; with the paper's force-RMS output scale and warm-up the student barely learns the energy in 60 epochs and
neither arm moves (0.98 vs 1.00), which is why the set-up fixes those task and fit options.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

DATASET = "rmd17:ethanol?root=embedded"
SMALL = {"hidden_channels": 32, "num_filters": 32, "num_interactions": 2, "num_gaussians": 25, "cutoff": 5.0}
EPOCHS, SEED, LAMBDA = 60, 1, 1.0
INFORMATIVE_AT_MOST = 0.75   # "a clear margin": at least 25 % below the best constant
NOISE_AT_LEAST = 0.85        # not more than 15 % below it (what 16 frames leave to memorise in-sample)


def best_constant_l_ed(targets: torch.Tensor, beta: float = 1.0) -> float:
    """min over constant c of mean SmoothL1(c, targets): per feature, the root of the (monotone) mean gradient
    mean(clamp((c - t) / beta, -1, 1)), found by bisection."""
    t = targets.double()
    lo, hi = t.min(0).values.clone(), t.max(0).values.clone()
    for _ in range(100):
        c = (lo + hi) / 2
        grad = torch.clamp((c - t) / beta, -1, 1).mean(0)
        lo, hi = torch.where(grad < 0, c, lo), torch.where(grad >= 0, c, hi)
    c = (lo + hi) / 2
    return float(torch.nn.functional.smooth_l1_loss(c.expand_as(t), t, beta=beta))


def _targets(tmp_path):
    """Informative and noise F_S for the training frames, written as .npz teacher-target files."""
    from edg.train.tasks import build_task
    train = build_task("rmd17:ethanol", root="embedded").train
    ids = list(train.ids)
    energy = train.mol_labels["energy"].double().numpy()
    e = (energy - energy.mean()) / energy.std()
    rng = np.random.default_rng(SEED)
    informative = e[:, None] * rng.standard_normal(512)[None, :] + 0.1 * rng.standard_normal((len(ids), 512))
    noise = rng.standard_normal((len(ids), 512)) * informative.std(0, keepdims=True)
    files = {}
    for name, fs in (("informative", informative), ("noise", noise)):
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], ids=np.array(ids), fs=fs.astype(np.float32))
    return files


def _l_ed(tmp_path, targets) -> tuple[float, float]:
    """(the loop's L_ED over its last 5 epochs, the best constant L_ED of the same targets)."""
    from edg.train.configs import FitConfig
    from edg.train.data.teacher_targets import load_teacher_targets
    from edg.train.io.model_files import build_ed_predictor
    from edg.train.loops.distill import DistillConfig, run_distill
    from edg.train.models.edg_head import EDGConfig
    cfg = DistillConfig(student="schnet", dataset=DATASET, out=str(tmp_path / targets.stem), student_args=SMALL,
                        task={"energy_weight": 1.0, "force_weight": 0.0, "energy_scale": "energy_std",
                              "select_metric": "energy_mae"},
                        fit=FitConfig(epochs=EPOCHS, batch_size=4, eval_batch_size=8, lr=1e-3, loss="l1",
                                      scheduler="none", warmup_steps=0, seed=SEED, checkpoint_every=0),
                        edg=EDGConfig(lambda_ed=LAMBDA, teacher_targets=str(targets)))
    record = run_distill(cfg)
    rows = [json.loads(line) for line in (tmp_path / targets.stem / record["run"] / "metrics.jsonl").open()]
    fitted = float(np.mean([r["train_ed_loss"] for r in rows[-5:]]))
    with np.load(targets) as z:
        ids = [str(i) for i in z["ids"]]
    edp = load_teacher_targets(str(targets), ids, build_ed_predictor(None, cfg.edg.ed_predictor_seed))
    return fitted, best_constant_l_ed(edp, cfg.edg.smooth_l1_beta)


def test_best_constant_is_the_minimum_over_constants():
    t = torch.tensor([[0.0, 10.0], [1.0, 10.5], [5.0, 11.0]], dtype=torch.float64)
    best = best_constant_l_ed(t)
    for c in ([1.0, 10.5], [1.5, 10.5], [0.5, 10.4], [2.0, 10.6], [1.2, 10.5]):
        other = float(torch.nn.functional.smooth_l1_loss(torch.tensor(c, dtype=torch.float64).expand_as(t), t))
        assert best <= other + 1e-9


def test_informative_targets_go_below_the_best_constant_and_noise_does_not(tmp_path):
    files = _targets(tmp_path)
    inf, inf_const = _l_ed(tmp_path, files["informative"])
    noise, noise_const = _l_ed(tmp_path, files["noise"])
    report = (f"L_ED informative {inf:.4g} vs best constant {inf_const:.4g} ({inf / inf_const:.2f}); "
              f"noise {noise:.4g} vs {noise_const:.4g} ({noise / noise_const:.2f})")
    print(report)
    assert inf <= INFORMATIVE_AT_MOST * inf_const, report
    assert noise >= NOISE_AT_LEAST * noise_const, report


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_the_mechanism_holds_for_other_seeds(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(sys.modules[__name__], "SEED", seed)
    test_informative_targets_go_below_the_best_constant_and_noise_does_not(tmp_path)
