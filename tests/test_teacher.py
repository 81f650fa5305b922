"""Teacher: F_S pooling, ED predictor, masked L1, augmentations, checkpoints, target export."""
import math

import numpy as np
import pytest
import torch
from edg.cluster.stages import run_extract
from edg.edg_core.errors import EDGError
from edg.edg_core.shards import read_samples
from edg.train.data.shards import ShardImages, image_loader, write_synthetic_shards
from edg.train.io.backbone_weights import init_backbone
from edg.train.io.model_files import load_ed_predictor, load_teacher, teacher_state
from edg.train.models.imageed import ImageED, imageed_preset
from edg.train.models.teacher import (
    TEACHER_PRESETS,
    EDPredictor,
    Teacher,
    TeacherConfig,
    augment_structure_images,
    teacher_loss,
)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return Teacher(TEACHER_PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def shards_with_fu(tmp_path_factory):
    """12 synthetic molecules in 2 shards (img/), and their F_U from a random tiny ImageED (fu.npz, fu/)."""
    root = tmp_path_factory.mktemp("teacher")
    write_synthetic_shards(root / "img", size=32, maxcount=6, limit=12)
    torch.manual_seed(0)
    run_extract("imageed", ImageED(imageed_preset("tiny")), root / "img", root / "fu.npz", batch_size=5)
    run_extract("imageed", ImageED(imageed_preset("tiny")), root / "img", root / "fu", batch_size=5)
    return root


def test_structure_features_are_view_means(teacher):
    x = torch.rand(3, 4, 3, 32, 32)
    fs, edp = teacher(x)
    assert fs.shape == (3, 512) and edp.shape == (3, 64)
    with torch.no_grad():
        per_view = teacher.backbone(((x - teacher.mean[None]) / teacher.std[None]).flatten(0, 1)).view(3, 4, 512)
    torch.testing.assert_close(fs, per_view.mean(1))
    torch.testing.assert_close(edp, teacher.ed_predictor(fs))
    # the order of the views does not matter (mean pooling)
    torch.testing.assert_close(teacher(x[:, [3, 1, 0, 2]])[0], fs, atol=1e-5, rtol=1e-5)


def test_paper_teacher_shapes():
    t = Teacher(TeacherConfig())
    assert t.fs_dim == 512
    layers = list(t.ed_predictor)
    assert [type(m).__name__ for m in layers] == ["Linear", "Softplus", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (512, 256, 768)


def test_loss_masks_molecules_without_fu():
    edp = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    fu = torch.tensor([[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]])
    has = torch.tensor([True, False, True])
    # molecule 0: mean |.| = 1.5, molecule 2: (2 + 2) / 2 = 2; molecule 1 ignored
    assert teacher_loss(edp, fu, has).item() == pytest.approx(1.75)
    assert teacher_loss(edp, fu, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_augmentations():
    x = torch.rand(6, 4, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_structure_images(x, TeacherConfig(aug_p=0.0), g), x)
    y = augment_structure_images(x, TeacherConfig(aug_p=1.0), g)
    assert y.shape == x.shape and (y - x).abs().mean() > 0.05
    assert 0 <= y.min() and y.max() <= 1
    flat = torch.full((2, 4, 3, 32, 32), 0.7)  # a flat image stays flat under zoom/rotation (border fill)/blur
    border = TeacherConfig(aug_p=1.0, rotation_fill="border", crop_scale=0.8)
    torch.testing.assert_close(augment_structure_images(flat, border, g), flat)
    crop_only = TeacherConfig(aug_p=1.0, max_rotation_deg=0.0, blur_sigma=(1e-3, 1e-3), crop_scale=0.8,
                              rotation_interpolation="bilinear")
    img = torch.zeros(1, 4, 3, 32, 32)
    img[..., 15:17, 15:17] = 1.0  # a centre dot grows when zoomed in
    assert (augment_structure_images(img, crop_only, g) > 0.1).sum() > (img > 0.1).sum()
    assert torch.equal(augment_structure_images(img, TeacherConfig(aug_p=1.0, max_rotation_deg=0.0,
                                                                   blur_sigma=(1e-3, 1e-3)), g), img)  # no zoom


def test_default_augmentations_are_the_authors():
    """Rotation up to 360 degrees with black corners, blur with a 3-tap kernel, each drawn per view."""
    cfg = TeacherConfig()
    assert (cfg.aug_p, cfg.max_rotation_deg, cfg.rotation_fill, cfg.blur_kernel, cfg.crop_scale,
            cfg.aug_per_view) == (0.2, 360.0, "black", 3, 1.0, True)
    g = torch.Generator().manual_seed(0)
    white = torch.ones(32, 4, 3, 32, 32)  # structure images have a white background
    rot = augment_structure_images(white, TeacherConfig(aug_p=1.0, blur_sigma=(1e-3, 1e-3)), g)
    corners = rot[..., [0, 0, -1, -1], [0, -1, 0, -1]]  # (B, V, 3, 4)
    assert (corners == 0).float().mean() > 0.5  # uncovered corners are black, not the background
    assert (rot[..., 16, 16] == 1).all()  # the centre stays
    dot = torch.zeros(1, 4, 3, 32, 32)
    dot[..., 16, 16] = 1.0
    blur3 = TeacherConfig(aug_p=1.0, max_rotation_deg=0.0, blur_sigma=(2.0, 2.0))
    spread = augment_structure_images(dot, blur3, g)[0, 0, 0] > 0
    assert spread.sum() == 9 and spread[15:18, 15:18].all()  # 3 x 3 kernel
    wide = TeacherConfig(aug_p=1.0, max_rotation_deg=0.0, blur_sigma=(2.0, 2.0), blur_kernel=0)
    assert (augment_structure_images(dot, wide, g)[0, 0, 0] > 0).sum() == 13 * 13  # the earlier option
    # per view: with p = 0.5 the 4 views of one molecule are not all treated alike; per molecule they are
    x = torch.rand(1, 1, 3, 32, 32).expand(64, 4, 3, 32, 32).contiguous()
    half = dict(aug_p=0.5, blur_sigma=(1.0, 1.0))
    per_view = augment_structure_images(x, TeacherConfig(**half), g)
    per_mol = augment_structure_images(x, TeacherConfig(**half, aug_per_view=False), g)
    differs = lambda y: (y - y[:, :1]).flatten(1).abs().amax(1) > 1e-6  # noqa: E731
    assert differs(per_view).float().mean() > 0.5 and not differs(per_mol).any()


def test_ed_predictor_loads_alone(teacher, tmp_path):
    torch.save(teacher_state(teacher), tmp_path / "teacher.pt")
    edp = load_ed_predictor(tmp_path / "teacher.pt")
    assert isinstance(edp, EDPredictor) and not edp.training
    assert not any(p.requires_grad for p in edp.parameters())
    fs = torch.randn(5, 512)
    torch.testing.assert_close(edp(fs), teacher.ed_predictor(fs))
    t2 = load_teacher(tmp_path)
    x = torch.rand(2, 4, 3, 32, 32)
    torch.testing.assert_close(t2(x)[1], teacher(x)[1])
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(EDGError, match="not a teacher checkpoint"):
        load_ed_predictor(tmp_path / "other.pt")


def test_pretrained_weights_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(1)
    src = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    torch.save(src.state_dict(), tmp_path / "r10t.pth")
    save_file(src.state_dict(), str(tmp_path / "r10t.safetensors"))
    for name in ("r10t.pth", "r10t.safetensors"):
        t = Teacher(TeacherConfig(arch="resnet10t", pretrained_weights=str(tmp_path / name), fu_dim=8))
        assert not torch.equal(t.backbone.conv1[0].weight, src.conv1[0].weight)  # construction: random init
        assert init_backbone(t) is t
        torch.testing.assert_close(t.backbone.conv1[0].weight, src.conv1[0].weight)
    with pytest.raises(EDGError, match="does not exist"):
        init_backbone(Teacher(TeacherConfig(arch="resnet10t", pretrained_weights=str(tmp_path / "missing.pth"))))
    with pytest.raises(EDGError, match="do not fit"):
        init_backbone(Teacher(TeacherConfig(arch="resnet18", pretrained_weights=str(tmp_path / "r10t.pth"))))
    with pytest.raises(ValueError, match="pretrained is off"):
        TeacherConfig(pretrained=False, pretrained_weights=str(tmp_path / "r10t.pth"))


@pytest.fixture()
def no_hub(tmp_path, monkeypatch):
    """The Hugging Face hub unreachable and nothing cached (offline mode fails at once instead of retrying)."""
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_imagenet_start_without_hub_or_file_is_a_one_line_error(no_hub):
    t = Teacher(TeacherConfig(arch="resnet10t", fu_dim=8))
    with pytest.raises(EDGError) as e:
        init_backbone(t)
    msg = str(e.value)
    assert "\n" not in msg and "--model.pretrained-weights" in msg and "--no-model.pretrained" in msg
    scratch = Teacher(TeacherConfig(arch="resnet10t", fu_dim=8, pretrained=False))
    w = scratch.backbone.conv1[0].weight.clone()
    assert torch.equal(init_backbone(scratch).backbone.conv1[0].weight, w)  # from scratch: nothing loaded


def test_edg_pretrain_teacher_without_weights_says_what_to_do(no_hub, shards_with_fu, tmp_path, capsys):
    from edg.cluster.cli import main
    argv = ["pretrain", "teacher", "--shards", str(shards_with_fu / "fu"), "--out", str(tmp_path / "t"),
            "--preset", "tiny", "--model.pretrained", "--num-workers", "0", "--epochs", "1"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--no-model.pretrained" in err[0] and "Traceback" not in err[0]


def test_a_resumed_teacher_run_does_not_fetch_its_starting_weights_again(shards_with_fu, tmp_path):
    """The starting backbone is loaded only by a run that resumes nothing: a rerun or a restart after the
    first checkpoint needs neither the hub nor the weights file (the checkpoint holds every weight)."""
    from dataclasses import replace

    import timm
    from edg.train.loops.pretrain import TeacherTrainConfig, train_teacher
    torch.manual_seed(1)
    weights = tmp_path / "r10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    model = replace(TEACHER_PRESETS["tiny"], pretrained=True, pretrained_weights=str(weights))
    cfg = TeacherTrainConfig(model=model, epochs=1, batch_size=6, num_workers=0)
    first = train_teacher(cfg, shards_with_fu / "fu", tmp_path / "run", device="cpu")
    weights.unlink()  # a resume must not need it
    again = train_teacher(replace(cfg, epochs=2), shards_with_fu / "fu", tmp_path / "run", device="cpu")
    assert first["epoch"] == 1 and again["epoch"] == 2  # epochs count from 1
    with pytest.raises(EDGError, match="does not exist"):  # a fresh run still starts from the file
        train_teacher(cfg, shards_with_fu / "fu", tmp_path / "fresh", device="cpu")


def test_teacher_batches_mark_missing_fu(shards_with_fu):
    fu = np.load(shards_with_fu / "fu.npz")
    assert fu["fu"].shape == (12, 64) and list(fu["ids"][:2]) == ["qm9:1", "qm9:2"]
    ds = ShardImages(shards_with_fu / "fu", "teacher", img_size=32, n_views=4, fu_dim=64)
    batch = next(iter(image_loader(ds, 12)))
    assert batch["has_fu"].all() and batch["stimg"].shape == (12, 4, 3, 32, 32)
    ds = ShardImages(shards_with_fu / "img", "teacher", img_size=32, n_views=4, fu_dim=64)
    batch = next(iter(image_loader(ds, 12)))
    assert not batch["has_fu"].any() and not batch["fu"].any()


def test_exported_targets_shapes_and_determinism(teacher, shards_with_fu, tmp_path):
    a = run_extract("teacher", teacher, shards_with_fu / "fu", tmp_path / "t.npz", batch_size=5)
    b = run_extract("teacher", teacher, shards_with_fu / "fu", tmp_path / "t2.npz", batch_size=12)
    assert a.done == b.done == 12 and a.failed == 0
    za, zb = np.load(tmp_path / "t.npz"), np.load(tmp_path / "t2.npz")
    assert za["fs"].shape == (12, 512) and za["edp"].shape == (12, 64) and za["ids"].shape == (12,)
    np.testing.assert_allclose(za["fs"], zb["fs"], rtol=1e-5, atol=1e-6)  # batch size does not matter
    np.testing.assert_allclose(za["edp"], zb["edp"], rtol=1e-5, atol=1e-6)
    # shard output: same values, images dropped on request, and a rerun skips what is done
    s = run_extract("teacher", teacher, shards_with_fu / "fu", tmp_path / "tshards", batch_size=5,
                    drop_images=True)
    assert s.done == 12
    samples = list(read_samples(tmp_path / "tshards"))
    assert [d["meta"]["id"] for d in samples] == list(za["ids"])
    assert "stimg" not in samples[0] and "edimg" not in samples[0] and samples[0]["fu"].shape == (64,)
    np.testing.assert_allclose(np.stack([d["edp"].numpy() for d in samples]), za["edp"], rtol=1e-6)
    again = run_extract("teacher", teacher, shards_with_fu / "fu", tmp_path / "tshards", batch_size=5)
    assert (again.done, again.skipped, again.failed) == (0, 12, 0)


def test_teacher_on_rendered_structure_images(tmp_path):
    """The structure images from the real renderer (32 px) through F_U -> teacher training -> target export."""
    render = pytest.importorskip("edg.render.renderer")
    from edg.edg_core.readers import open_source
    from edg.edg_core.shards import ShardWriter, encode_sample
    from edg.render.config import RenderConfig
    from edg.train.data.shards import synthetic_images
    from edg.train.loops.pretrain import TeacherTrainConfig, train_teacher
    with ShardWriter(tmp_path / "img", maxcount=8) as w:
        for mol in open_source("embedded:qm9?limit=16").molecules():
            ed, _ = synthetic_images(mol.z, mol.pos, 32)  # ED images need DFT fields: synthetic here
            st = render.render_structure(mol.z, mol.pos, RenderConfig(image_size=32))
            w.write(encode_sample(mol, edimg=ed, stimg=st))
    torch.manual_seed(0)
    run_extract("imageed", ImageED(imageed_preset("tiny")), tmp_path / "img", tmp_path / "fu")
    cfg = TeacherTrainConfig(model=TEACHER_PRESETS["tiny"], epochs=2, batch_size=8, num_workers=0, val_fraction=0.0)
    m = train_teacher(cfg, tmp_path / "fu", tmp_path / "run")
    assert math.isfinite(m["train_loss"]) and m["train_with_fu"] == 1.0
    assert m["lr"] == pytest.approx(cfg.lr)  # constant lr (the authors'), not decayed to 0 at the last epoch
    t = load_teacher(tmp_path / "run" / "teacher.pt")
    run_extract("teacher", t, tmp_path / "fu", tmp_path / "a.npz")
    run_extract("teacher", t, tmp_path / "fu", tmp_path / "b.npz")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["edp"].shape == (16, 64) and np.array_equal(a["edp"], b["edp"]) and np.array_equal(a["fs"], b["fs"])
    assert np.unique(a["fs"].round(5), axis=0).shape[0] == 16  # every molecule gets its own F_S
