"""`edg import`: files built in the EDG authors' exact formats (their module structure, key names and shapes,
re-declared here from their published code: ImageED/models_mae_multi_view_RGBD.py, ED_teacher/model/*.py,
ED_teacher/pretrain_ED_teachers.py, their README) become our checkpoints and feature files, and the imported
models compute what theirs compute."""
from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from functools import partial

import numpy as np
import pytest
import torch
from edg.edg_core.safe_pickle import UnsafePickleError, safe_load, safe_load_npz
from timm.models.vision_transformer import Block
from torch import nn


# ---------------------------------------------------------------- their modules (structure and names only)
def their_sincos(dim: int, length: int, views: int) -> torch.Tensor:
    """generate_2d_sincos_pos_embeddings(use_class_token=True): [sin h, cos h, sin w, cos w], zero cls row."""
    pos = torch.arange(length, dtype=torch.float32)
    h, w = torch.meshgrid(pos, pos, indexing="ij")
    om = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    hw, ww = torch.outer(h.flatten(), om), torch.outer(w.flatten(), om)
    pe = torch.cat([hw.sin(), hw.cos(), ww.sin(), ww.cos()], 1)[None].repeat(1, views, 1)
    return torch.cat([torch.zeros(1, 1, dim), pe], 1)


class TheirPatchEmbed(nn.Module):  # ViewAgnosticPatchEmbed
    def __init__(self, p, c, d):
        super().__init__()
        self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p)
        self.norm = nn.Identity()

    def forward(self, x):
        x = torch.stack([self.proj(x[:, i]) for i in range(x.shape[1])], dim=2)
        return self.norm(x.flatten(2).transpose(1, 2))


class TheirMAE(nn.Module):  # MaskedAutoencoderViT (in_chans=4, n_views=6, LayerNorm eps 1e-6)
    def __init__(self, img=224, p=16, c=4, views=6, d=768, depth=12, heads=12, dd=512, ddepth=8, dheads=16):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.p, self.c, self.views = p, c, views
        self.patch_embed = TheirPatchEmbed(p, c, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(their_sincos(d, img // p, views), requires_grad=False)
        self.blocks = nn.ModuleList([Block(d, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dd) * 0.02)
        self.decoder_pos_embed = nn.Parameter(their_sincos(dd, img // p, views), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(dd, dheads, 4.0, qkv_bias=True, norm_layer=norm)
                                             for _ in range(ddepth)])
        self.decoder_norm = norm(dd)
        self.decoder_pred = nn.Linear(dd, p * p * c)

    def forward_encoder(self, x, mask_ratio):  # their masking, noise from the global generator
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(n, length), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].repeat(1, 1, d))
        mask = torch.ones(n, length)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        mt = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:], mt], 1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class TheirPredictor(nn.Module):  # ED_teacher/model/predictor.py Predictor: get_classifier("arch1")
    def __init__(self, i, o):
        super().__init__()
        self.network = nn.Sequential(OrderedDict([("linear1", nn.Linear(i, i // 2)), ("Softplus", nn.Softplus()),
                                                  ("linear2", nn.Linear(i // 2, o))]))

    def forward(self, x):
        return self.network(x)


class TheirBackbone(nn.Module):  # Backboneredictor(model_name, head_arch="none"): timm model, head = Identity
    def __init__(self, name):
        super().__init__()
        import timm
        self.model = timm.create_model(name, pretrained=False)
        setattr(self.model, self.model.default_cfg["classifier"], nn.Identity())

    def forward(self, x):
        return self.model(x)


def small_mae():
    torch.manual_seed(0)
    return TheirMAE(img=32, p=8, c=4, views=6, d=32, depth=2, heads=2, dd=16, ddepth=1, dheads=2).eval()


# ---------------------------------------------------------------- ImageED
def test_imageed_import_computes_what_their_mae_computes(tmp_path):
    from edg.cluster.cli import main
    from edg.train.io.model_files import load_imageed
    from edg.train.models.imageed import normalise_views
    theirs = small_mae()
    ck = {"model": theirs.state_dict(), "optimizer": torch.optim.AdamW(theirs.parameters()).state_dict(), "epoch": 7,
          "scaler": {"scale": 65536.0, "growth_tracker": 0},
          "args": argparse.Namespace(model="custom", mask_ratio=0.25, norm_pix_loss=True, batch_size=8)}
    torch.save(ck, tmp_path / "checkpoint-799.pth")
    assert main(["import", "imageed", "--src", str(tmp_path / "checkpoint-799.pth"), "--out",
                 str(tmp_path / "imageed.pt"), "--num-heads", "2", "--decoder-num-heads", "2"]) == 0
    ours = load_imageed(tmp_path / "imageed.pt")
    c = ours.cfg
    assert (c.img_size, c.patch_size, c.embed_dim, c.depth, c.decoder_depth, c.cls_token, c.view_embedding) == \
        (32, 8, 32, 2, 1, True, False)
    imgs = torch.rand(2, 6, 4, 32, 32)
    with torch.no_grad():
        latent, _, _ = theirs.forward_encoder(normalise_views(imgs), 0.0)  # their input: RGB normalised, D in [0, 1]
        # F_U = mean of the patch tokens; their all-visible pass only permutes them
        torch.testing.assert_close(ours.features(imgs), latent[:, 1:].mean(1), atol=1e-5, rtol=1e-5)
        torch.manual_seed(3)
        lat, mask, ids = theirs.forward_encoder(normalise_views(imgs), 0.25)
        pred_theirs = theirs.forward_decoder(lat, ids)
        torch.manual_seed(3)  # the same noise -> the same mask
        out = ours(imgs)
    assert torch.equal(out["mask"], mask)
    torch.testing.assert_close(out["pred"], pred_theirs, atol=1e-5, rtol=1e-5)


AUTHORS_MAE_TRAINABLE = 111_983_616
"""Trainable parameters of the authors' ``mae_vit_base_patch16(in_chans=4, norm_pix_loss=True)`` (their
ImageED/models_mae_multi_view_RGBD.py at HongxinXiang/EDG 3293258b, instantiated outside this repository:
``sum(p.numel() for p in model.parameters() if p.requires_grad)``; their two fixed sin-cos position embeddings,
1 x 1177 x 768 and 1 x 1177 x 512, are frozen parameters on top)."""


def test_imageed_key_mapping_covers_the_vit_b16_preset_without_allocating():
    from dataclasses import replace

    from edg.train.configs import imageed_preset
    from edg.train.io.import_assets import imageed_config, imageed_key
    from edg.train.models.imageed import ImageED
    with torch.device("meta"):
        their_model = TheirMAE()  # mae_vit_base_patch16_dec512d8b(in_chans=4)
        theirs = {k: v for k, v in their_model.state_dict().items()}
        cfg = imageed_config(theirs, args=argparse.Namespace(model="mae_vit_base_patch16"))
        ours = ImageED(cfg).state_dict()
        paper = ImageED(imageed_preset("paper"))
    assert cfg == replace(imageed_preset("vit_b16"), view_embedding=False, cls_token=True)
    mapped = {imageed_key(k): tuple(v.shape) for k, v in theirs.items() if imageed_key(k) is not None}
    assert mapped == {k: tuple(v.shape) for k, v in ours.items()}
    assert sum(np.prod(s) for s in mapped.values()) > 100e6  # the whole MAE (encoder 86 M + decoder)
    # the paper preset is exactly their model: same keys and shapes, same trainable parameters
    assert imageed_preset("paper") == cfg
    assert {k: tuple(v.shape) for k, v in paper.state_dict().items()} == mapped
    trainable = sum(p.numel() for p in their_model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in paper.parameters()) == trainable == AUTHORS_MAE_TRAINABLE
    # the project's default has no class token and adds a learned view embedding to encoder and decoder
    with torch.device("meta"):
        default = sum(p.numel() for p in ImageED(imageed_preset("vit_b16")).parameters())
    assert default == AUTHORS_MAE_TRAINABLE - 768 + 6 * 768 + 6 * 512


def test_imageed_import_refuses_other_files(tmp_path):
    from edg.train.io.import_assets import AssetFormatError, import_imageed
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "x.pth")
    with pytest.raises(AssetFormatError, match="not the authors' MAE state dict"):
        import_imageed(tmp_path / "x.pth", tmp_path / "o.pt")
    sd = small_mae().state_dict()
    sd["pos_embed"] = sd["pos_embed"] + 0.1  # not the fixed sin-cos embedding: the model would differ
    torch.save(sd, tmp_path / "y.pth")
    with pytest.raises(AssetFormatError, match="sin-cos"):
        import_imageed(tmp_path / "y.pth", tmp_path / "o.pt", num_heads=2, decoder_num_heads=2)


# ---------------------------------------------------------------- teacher
@pytest.fixture(scope="module")
def their_teacher(tmp_path_factory):
    """ED-aware-Teacher.pth as their save_checkpoint writes it (resnet18, 512 -> 256 -> 768)."""
    torch.manual_seed(0)
    backbone, predictor = TheirBackbone("resnet18").eval(), TheirPredictor(512, 768).eval()
    path = tmp_path_factory.mktemp("authors") / "ED-aware-Teacher.pth"
    opt = torch.optim.SGD([*backbone.parameters(), *predictor.parameters()], lr=5e-3, momentum=0.9)
    torch.save({"epoch": 49, "desc": {"step": 280000, "epoch": 49.0, "total_loss": 0.21, "ED_loss": 0.21},
                "ED_teacher": {k: v.cpu() for k, v in backbone.state_dict().items()},
                "EDPredictor": {k: v.cpu() for k, v in predictor.state_dict().items()},
                "optimizer": opt.state_dict()}, path)
    return path, backbone, predictor


def test_teacher_import_computes_what_their_teacher_computes(their_teacher, tmp_path):
    from edg.cluster.cli import main
    from edg.train.configs import IMAGENET_MEAN, IMAGENET_STD
    from edg.train.io.model_files import build_ed_predictor, load_teacher
    path, backbone, predictor = their_teacher
    assert main(["import", "teacher", "--src", str(path), "--out", str(tmp_path / "teacher.pt")]) == 0
    ours = load_teacher(tmp_path / "teacher.pt")
    x = torch.rand(2, 4, 3, 64, 64)
    norm = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        fs_theirs = backbone(norm.reshape(8, 3, 64, 64)).reshape(2, 4, -1).mean(1)  # their train_one_epoch
        fs, edp = ours(x)
        torch.testing.assert_close(fs, fs_theirs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(edp, predictor(fs_theirs), atol=1e-4, rtol=1e-4)
        # what `edg distill --ed-predictor` loads: their EDPredictor, frozen
        edp_only = build_ed_predictor(str(tmp_path / "teacher.pt"))
        torch.testing.assert_close(edp_only(fs_theirs), predictor(fs_theirs), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in edp_only.parameters())


def test_imported_teacher_feeds_extract_and_distill(their_teacher, tmp_path):
    from edg.cluster.cli import main
    from edg.train.data.shards import write_synthetic_shards
    from edg.train.data.teacher_targets import load_teacher_targets
    from edg.train.io.model_files import build_ed_predictor
    path, _, predictor = their_teacher
    assert main(["import", "teacher", "--src", str(path), "--out", str(tmp_path / "teacher.pt")]) == 0
    write_synthetic_shards(tmp_path / "img", size=32, maxcount=4, limit=6)
    assert main(["extract", "teacher-targets", "--teacher", str(tmp_path / "teacher.pt"), "--shards",
                 str(tmp_path / "img"), "--out", str(tmp_path / "targets.npz"), "--device", "cpu"]) == 0
    d = np.load(tmp_path / "targets.npz")
    assert d["fs"].shape == (6, 512) and d["edp"].shape == (6, 768)
    with torch.no_grad():
        np.testing.assert_allclose(d["edp"], predictor(torch.from_numpy(d["fs"])).numpy(), atol=1e-5)
    ids = [str(i) for i in d["ids"]]
    got = load_teacher_targets(str(tmp_path / "targets.npz"), ids, build_ed_predictor(str(tmp_path / "teacher.pt")))
    np.testing.assert_allclose(got.numpy(), d["edp"], atol=1e-6)


def test_teacher_import_refuses_a_wrong_file(their_teacher, tmp_path):
    from edg.train.io.import_assets import AssetFormatError, import_teacher
    torch.save({"model": {}}, tmp_path / "x.pth")
    with pytest.raises(AssetFormatError, match="ED_teacher"):
        import_teacher(tmp_path / "x.pth", tmp_path / "t.pt")
    with pytest.raises(AssetFormatError, match="does not fit resnet34"):
        import_teacher(their_teacher[0], tmp_path / "t.pt", arch="resnet34")


# ---------------------------------------------------------------- features
class Payload:
    """A pickle that would create a file (and could run anything) when loaded with plain pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"feats": np.zeros((1, 4)), "ED_index_list": [Payload(marker)]})
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|refused"):
        safe_load(blob)
    assert not marker.exists()
    (tmp_path / "evil.pkl").write_bytes(blob)
    from edg.train.io.import_assets import import_ed_features
    with pytest.raises(UnsafePickleError):
        import_ed_features(tmp_path / "evil.pkl", tmp_path / "fu.npz")
    assert not marker.exists()
    # plain data of every protocol comes back intact (numpy arrays, scalars, containers)
    data = {"feats": np.arange(6, dtype=np.float32).reshape(2, 3), "ED_index_list": ["a", 7, np.int64(9)],
            "resume": "ckpt.pth", "s": {1, 2}, "t": (1.5, None, True), "o": np.array(["x", 3], dtype=object)}
    for protocol in (2, 4, 5):
        back = safe_load(pickle.dumps(data, protocol=protocol))
        assert back["ED_index_list"] == ["a", 7, 9] and back["s"] == {1, 2} and back["t"] == (1.5, None, True)
        np.testing.assert_array_equal(back["feats"], data["feats"])
        assert list(back["o"]) == ["x", 3]


def test_ed_features_to_npz_and_to_shards(tmp_path):
    from edg.edg_core.shards import read_samples
    from edg.train.data.shards import ShardImages, write_synthetic_shards
    from edg.train.io.import_assets import import_ed_features
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, 768)).astype(np.float32)
    with open(tmp_path / "200w_ED_feats.pkl", "wb") as f:  # their README: {"feats": ndarray, "ED_index_list": list}
        pickle.dump({"feats": feats, "ED_index_list": [1, 2, 3, 5, 8]}, f)
    s = import_ed_features(tmp_path / "200w_ED_feats.pkl", tmp_path / "fu.npz", id_format="qm9:{}")
    assert s["molecules"] == 5
    with np.load(tmp_path / "fu.npz", allow_pickle=False) as d:
        assert list(d["ids"]) == ["qm9:1", "qm9:2", "qm9:3", "qm9:5", "qm9:8"]
        np.testing.assert_array_equal(d["fu"], feats)
    write_synthetic_shards(tmp_path / "img", "embedded:qm9", size=32, maxcount=4, limit=8)
    s = import_ed_features(tmp_path / "200w_ED_feats.pkl", tmp_path / "fu", id_format="qm9:{}",
                           shards=tmp_path / "img")
    assert (s["with_fu"], s["without"]) == (5, 3)  # qm9:1..8 in the shards; 1, 2, 3, 5, 8 have features
    fu = {x["meta"]["id"]: x.get("fu") for x in read_samples(tmp_path / "fu", torch_tensors=False)}
    np.testing.assert_array_equal(fu["qm9:5"], feats[3])
    assert fu["qm9:4"] is None
    teacher_input = list(ShardImages(tmp_path / "fu", "teacher", img_size=32, n_views=4, fu_dim=768))
    assert sum(bool(x["has_fu"]) for x in teacher_input) == 5  # what `edg pretrain teacher` trains on


def test_teacher_features_to_targets(their_teacher, tmp_path):
    from edg.train.data.teacher_targets import load_teacher_targets
    from edg.train.io.import_assets import import_teacher, import_teacher_features
    from edg.train.io.model_files import build_ed_predictor
    _, _, predictor = their_teacher
    import_teacher(their_teacher[0], tmp_path / "teacher.pt")
    fs = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    # their rMD17 file: drug_id = frame indices; here as an object array, which numpy would need pickle for
    np.savez(tmp_path / "teacher_features.npz", drug_id=np.array([10, 11, 12, 40], dtype=object), feats=fs)
    assert set(safe_load_npz(tmp_path / "teacher_features.npz")) == {"drug_id", "feats"}
    s = import_teacher_features(tmp_path / "teacher_features.npz", tmp_path / "t.npz",
                                id_format="rmd17:aspirin:{}", teacher=tmp_path / "teacher.pt")
    assert s == {"out": str(tmp_path / "t.npz"), "molecules": 4, "fs_dim": 512, "edp": True}
    ids = ["rmd17:aspirin:40", "rmd17:aspirin:10"]
    got = load_teacher_targets(str(tmp_path / "t.npz"), ids, build_ed_predictor(str(tmp_path / "teacher.pt")))
    with torch.no_grad():
        np.testing.assert_allclose(got.numpy(), predictor(torch.from_numpy(fs[[3, 0]])).numpy(), atol=1e-5)
    # their rMD17 ids are rows of the archive file; ours are its old_indices (MD17 frame numbers)
    np.savez(tmp_path / "rmd17_aspirin.npz", old_indices=np.arange(100) * 7 + 3, energies=np.zeros(100))
    import_teacher_features(tmp_path / "teacher_features.npz", tmp_path / "a.npz",
                            rmd17_archive=tmp_path / "rmd17_aspirin.npz")
    with np.load(tmp_path / "a.npz") as d:
        assert list(d["ids"]) == ["rmd17:aspirin:73", "rmd17:aspirin:80", "rmd17:aspirin:87", "rmd17:aspirin:283"]
    # QM9 names with a prefix to strip; without drug_id the row is the id
    np.savez(tmp_path / "q.npz", drug_id=np.array(["gdb_1", "gdb_7"]), feats=fs[:2])
    import_teacher_features(tmp_path / "q.npz", tmp_path / "q_out.npz", id_format="qm9:{}", strip_prefix="gdb_")
    with np.load(tmp_path / "q_out.npz") as d:
        assert list(d["ids"]) == ["qm9:1", "qm9:7"] and "edp" not in d.files
    np.savez(tmp_path / "n.npz", feats=fs[:3])
    import_teacher_features(tmp_path / "n.npz", tmp_path / "n_out.npz")
    with np.load(tmp_path / "n_out.npz") as d:
        assert list(d["ids"]) == ["0", "1", "2"]
    import_teacher_features(tmp_path / "n.npz", tmp_path / "r_out.npz", row_ids="embedded:qm9?limit=3")
    with np.load(tmp_path / "r_out.npz") as d:
        assert list(d["ids"]) == ["qm9:1", "qm9:2", "qm9:3"]
    with pytest.raises(Exception, match="3 rows, but embedded:qm9"):
        import_teacher_features(tmp_path / "n.npz", tmp_path / "r_out.npz", row_ids="embedded:qm9?limit=5")
