"""The paper's per-student / per-dataset settings, their resolution under user values, the student lr schedule
(warm-up, plateau, cosine), and the paper config enumerating Table 1 and Table 2."""
from __future__ import annotations

import pytest
import torch
from edg.cluster.pipeline import Pipeline, load_pipeline_config
from edg.edg_core.readers.qm9 import TARGETS
from edg.edg_core.readers.rmd17 import MOLECULES
from edg.train.configs import FitConfig
from edg.train.loops.distill import DistillConfig, train_student
from edg.train.loops.student_schedule import StudentSchedule
from edg.train.paper_settings import PAPER_LAMBDAS, paper_settings, resolve, settings_table
from edg.train.students import build_student
from edg.train.tasks import build_task


def test_visnet_rmd17_settings_are_the_authors_yaml_and_user_values_win():
    fit, student, task = resolve("visnet", "rmd17:aspirin", FitConfig())
    assert (fit.epochs, fit.batch_size, fit.eval_batch_size, fit.lr) == (3000, 4, 16, 2e-4)
    assert (fit.loss, fit.scheduler, fit.warmup_steps, fit.plateau_factor, fit.plateau_patience) == \
        ("mse", "plateau", 1000, 0.8, 30)
    assert task == {"select_metric": "weighted_mse", "energy_grad_scale": 0.05}
    fit, student, task = resolve("visnet", "rmd17:aspirin", FitConfig(batch_size=32, lr=1e-3),
                                 {"hidden_channels": 64}, {"select_metric": "force_mae"})
    assert (fit.batch_size, fit.lr, fit.epochs) == (32, 1e-3, 3000)  # given values kept, the rest filled
    assert student == {"hidden_channels": 64} and task["select_metric"] == "force_mae"


def test_geom3d_students_per_family():
    for s in ("schnet", "egnn", "equiformer", "spherenet"):
        q = paper_settings(s, "qm9:U0").fit
        r = paper_settings(s, "rmd17:ethanol").fit
        assert (q["batch_size"], q["epochs"], q["lr"], q["loss"], q["scheduler"]) == (128, 1000, 5e-4, "l1", "cosine")
        assert (r["batch_size"], r["epochs"], r["lr"], r["loss"]) == (1, 1000, 5e-4, "l1")  # MD17 batch 1
    assert paper_settings("egnn", "rmd17:ethanol").student["cutoff"] == 5.0
    assert paper_settings("equiformer", "qm9:U0").student == {}  # alpha_drop 0.2 is the config default
    assert paper_settings("equiformer", "rmd17:ethanol").student == {"alpha_drop": 0.0}
    cfg = DistillConfig(student="schnet", dataset="qm9:gap").resolved()
    assert cfg.fit.batch_size == 128 and cfg.fit.scheduler == "cosine"
    assert "| visnet | rmd17 | 3000 | 4 | 16 | 0.0002 | mse | plateau | 1000 |" in settings_table()
    with pytest.raises(ValueError, match="family"):
        paper_settings("schnet", "md22:x")
    # train_student's own fallback is the Geom3D QM9 entry, field for field
    filled = FitConfig().filled()
    assert {k: getattr(filled, k) for k in q} == q
    assert r == {**q, "batch_size": 1}


def _one_param_optimizer(lr=1.0):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_schedule_warmup_then_plateau_and_cosine():
    opt = _one_param_optimizer(2.0)
    sch = StudentSchedule(opt, FitConfig(scheduler="plateau", warmup_steps=4, epochs=10, plateau_factor=0.5,
                                         plateau_patience=1, min_lr=0.3))
    lrs = []
    for _ in range(6):
        sch.before_step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]  # linear warm-up per optimiser step
    for metric in (1.0, 1.0, 1.0):  # no improvement: after patience 1 the lr halves
        sch.end_epoch(metric)
    assert opt.param_groups[0]["lr"] == 1.0
    for _ in range(6):
        sch.end_epoch(1.0)
    assert opt.param_groups[0]["lr"] == 0.3  # never below min_lr
    state = sch.state_dict()
    again = StudentSchedule(opt, FitConfig(scheduler="plateau", warmup_steps=4, epochs=10))
    again.load_state_dict(state)
    assert again.steps == 6
    opt = _one_param_optimizer(1.0)
    cos = StudentSchedule(opt, FitConfig(scheduler="cosine", warmup_steps=0, epochs=4))
    for _ in range(2):
        opt.step()
        cos.end_epoch(0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # half-way down the cosine
    with pytest.raises(ValueError, match="scheduler"):
        StudentSchedule(opt, FitConfig(scheduler="step", epochs=1))


def test_train_student_with_mse_plateau_and_warmup():
    task = build_task("rmd17:ethanol", root="/work/shared/data/rmd17", train_size=16, valid_size=4, test_size=4)
    torch.manual_seed(0)
    model = build_student("schnet", hidden_channels=8, num_filters=8, num_interactions=1, num_gaussians=8,
                          cutoff=5.0)
    res = train_student(task, model, FitConfig(epochs=3, batch_size=4, eval_batch_size=8, lr=1e-3, loss="mse",
                                               scheduler="plateau", warmup_steps=8, seed=0))
    # 4 steps per epoch, warm-up over 8: the last step of epoch 1 runs at 4/8 of the lr, epoch 2 reaches it
    assert [h["lr"] for h in res.history] == pytest.approx([5e-4, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="loss"):
        train_student(task, model, FitConfig(epochs=1, batch_size=4, loss="huber"))


def test_paper_config_enumerates_table1_and_table2(tmp_path):
    cfg = load_pipeline_config("configs/paper.yaml", {"out": str(tmp_path / "paper"), "ray": {"enabled": False}})
    from edg.train.configs import imageed_preset
    assert cfg.imageed.model == imageed_preset("paper")  # the authors' ImageED exactly, in both paper configs
    assert load_pipeline_config("configs/paper-qm9.yaml", {"out": str(tmp_path / "q"), "ray": {"enabled": False}}
                                ).imageed.model == imageed_preset("paper")
    st = cfg.students
    qm9 = [d for d in st.dataset_list() if d.startswith("qm9:")]
    rmd = [d for d in st.dataset_list() if d.startswith("rmd17:")]
    assert [d.split(":")[1] for d in qm9] == list(TARGETS)  # the 12 targets
    assert sorted(d.split(":")[1] for d in rmd) == sorted(MOLECULES)  # the 10 molecules
    assert st.students_for("qm9:U0") == ["schnet", "egnn", "equiformer", "spherenet"]
    assert st.students_for("rmd17:aspirin") == ["schnet", "spherenet", "visnet"]
    assert [lam for lam in st.lambdas if lam > 0] == list(PAPER_LAMBDAS) and 0.0 in st.lambdas
    assert "qm9?split=train" in st.conformation_specs() and len(st.conformation_specs()) == 11
    cfgs = Pipeline(cfg).distill_configs()
    assert len(cfgs) == (12 * 4 + 10 * 3) * len(st.lambdas) * len(st.seeds)
    resolved = {(c.student, c.dataset): c.resolved() for c in cfgs}
    v = resolved[("visnet", "rmd17:aspirin")]
    assert (v.fit.batch_size, v.fit.epochs, v.fit.lr, v.fit.loss, v.fit.scheduler, v.fit.device) == \
        (4, 3000, 2e-4, "mse", "plateau", "cuda")
    s = resolved[("schnet", "rmd17:uracil")]
    assert (s.fit.batch_size, s.fit.lr, s.fit.scheduler, s.task["select_metric"]) == (1, 5e-4, "cosine", "force_mae")
    e = resolved[("egnn", "qm9:Cv")]
    assert (e.fit.batch_size, e.fit.epochs, e.fit.loss) == (128, 1000, "l1") and e.student_args == {}
    assert ("visnet", "qm9:U0") not in resolved and ("egnn", "rmd17:aspirin") not in resolved
