"""ImageED: token layout, masking, position/view embeddings, losses by hand, learning, features, figure."""
import numpy as np
import pytest
import torch
from edg.train.data.shards import ShardImages, image_loader, to_device, write_synthetic_shards
from edg.train.io.figures import save_reconstruction_png
from edg.train.io.model_files import load_imageed
from edg.train.models.imageed import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageED,
    ImageEDConfig,
    imageed_preset,
    sincos_pos_embed_2d,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only add contention for these tiny models
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ImageED(imageed_preset("tiny"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("imageed_shards")
    write_synthetic_shards(out, size=32, maxcount=10, limit=8)
    ds = ShardImages(out, "imageed", img_size=32, n_views=6)
    return to_device(next(iter(image_loader(ds, 8))), "cpu")["edimg"]  # uint8 batch -> floats in [0, 1]


def test_paper_token_counts():
    cfg = ImageEDConfig()
    assert (cfg.grid_size, cfg.num_patches, cfg.num_tokens, cfg.num_visible) == (14, 196, 1176, 882)
    x = torch.arange(1176.0).view(1, 1176, 1).repeat(2, 1, 3)
    visible, mask, ids_restore = ImageED.random_masking(x, cfg.mask_ratio, torch.Generator().manual_seed(1))
    assert visible.shape == (2, 882, 3)
    assert mask.sum(1).tolist() == [294.0, 294.0]
    for b in range(2):
        kept = visible[b, :, 0].long()
        masked = mask[b].nonzero().squeeze(1)
        # visible and masked ids are disjoint and together cover every token once
        assert torch.equal(torch.sort(torch.cat([kept, masked])).values, torch.arange(1176))
        assert not mask[b, kept].any()
        # ids_restore puts the visible tokens (followed by mask tokens) back at their original places
        filled = torch.cat([kept, torch.full((294,), -1)])[ids_restore[b]]
        assert torch.equal(filled == -1, mask[b].bool())
        assert torch.equal(filled[~mask[b].bool()], torch.arange(1176)[~mask[b].bool()])


def test_patchify_is_view_first_and_invertible(tiny):
    p, g = 8, 4
    imgs = torch.rand(2, 6, 4, 32, 32)
    tokens = tiny.patchify(imgs)
    assert tokens.shape == (2, 6 * 16, 8 * 8 * 4)
    for v, i, j in [(0, 0, 0), (2, 1, 3), (5, 3, 2)]:
        patch = imgs[1, v, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(1, 2, 0).reshape(-1)
        assert torch.equal(tokens[1, v * g * g + i * g + j], patch)
    assert torch.equal(tiny.unpatchify(tokens), imgs)


def test_embedding_order_matches_patch_order(tiny):
    """Token k of the encoder input comes from patch k of ``patchify`` (shared patch embedding)."""
    imgs = torch.rand(1, 6, 4, 32, 32)
    tokens = tiny.embed(imgs) - tiny._positions(tiny.pos_embed, tiny.view_embed)
    from edg.train.models.imageed import normalise_views
    w = tiny.patch_embed.weight.permute(0, 2, 3, 1).reshape(tiny.cfg.embed_dim, -1)  # (D, p*p*C) row, col, chan
    by_hand = tiny.patchify(normalise_views(imgs)) @ w.T + tiny.patch_embed.bias
    torch.testing.assert_close(tokens, by_hand, atol=1e-5, rtol=1e-5)


def test_positions_repeat_per_view_and_view_embedding():
    cfg = imageed_preset("tiny")
    pe = sincos_pos_embed_2d(64, 4)
    assert pe.shape == (16, 64)
    assert torch.allclose(pe[0, :16], torch.zeros(16)) and torch.allclose(pe[0, 16:32], torch.ones(16))
    assert len({tuple(r.tolist()) for r in pe}) == 16  # every patch position is distinct
    m = ImageED(cfg)
    pos = m.pos_embed[0].view(6, 16, 64)
    assert all(torch.equal(pos[v], pe) for v in range(6))
    full = m._positions(m.pos_embed, m.view_embed)[0].view(6, 16, 64)
    for v in range(6):
        torch.testing.assert_close(full[v] - pe, m.view_embed[0, v].expand(16, 64))
    off = ImageED(imageed_preset("tiny", view_embedding=False))
    assert off.view_embed is None and off.decoder_view_embed is None
    assert torch.equal(off._positions(off.pos_embed, off.view_embed)[0].view(6, 16, 64)[3], pe)
    assert sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in off.parameters()) == 6 * (64 + 32)


def test_paper_sizes_build():
    m = ImageED(ImageEDConfig())
    assert m.decoder_pred.out_features == 16 * 16 * 4
    assert len(m.blocks) == 12 and len(m.decoder_blocks) == 8
    assert m.blocks[0].attn.num_heads == 12 and m.decoder_blocks[0].attn.num_heads == 16
    assert m.pos_embed.shape == (1, 1176, 768) and m.decoder_pos_embed.shape == (1, 1176, 512)
    assert all(b.attn.fused_attn for b in [*m.blocks, *m.decoder_blocks])  # F.scaled_dot_product_attention


@pytest.mark.gpu
def test_bf16_sdpa_step_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    m = ImageED(imageed_preset("tiny")).cuda()
    x = torch.rand(4, 6, 4, 32, 32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x, generator=g)
    assert out["mask"].sum().item() == 4 * 24
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(torch.isfinite(p.grad).all() for p in m.parameters())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fu_bf16 = m.features(x)
    fu = m.features(x)
    assert fu_bf16.dtype == torch.float32
    torch.testing.assert_close(fu_bf16, fu, atol=0.1, rtol=0.05)


def test_losses_match_hand_computation(tiny):
    torch.manual_seed(3)
    imgs = torch.rand(2, 6, 4, 32, 32)
    out = tiny(imgs, generator=torch.Generator().manual_seed(5))
    pred, mask = out["pred"].detach(), out["mask"]
    mean = torch.tensor(IMAGENET_MEAN + (0.0,)).view(1, 1, 4, 1, 1)
    std = torch.tensor(IMAGENET_STD + (1.0,)).view(1, 1, 4, 1, 1)
    norm = (imgs - mean) / std
    mp, rp = [], []
    for b in range(2):
        for v in range(6):
            for i in range(4):
                for j in range(4):
                    t = norm[b, v, :, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8].permute(1, 2, 0).reshape(-1).double()
                    t = (t - t.mean()) / (t.var(unbiased=True) + 1e-6).sqrt()
                    k = v * 16 + i * 4 + j
                    err = ((pred[b, k].double() - t) ** 2).mean().item()
                    (mp if mask[b, k] else rp).append(err)
    assert len(mp) == 2 * (96 - 72) and len(rp) == 2 * 72
    assert out["l_mp"].item() == pytest.approx(np.mean(mp), rel=1e-5)
    assert out["l_rp"].item() == pytest.approx(np.mean(rp), rel=1e-5)
    assert out["loss"].item() == pytest.approx(np.mean(mp) + np.mean(rp), rel=1e-5)
    weighted = ImageED(imageed_preset("tiny", mp_weight=2.0, rp_weight=0.0))
    weighted.load_state_dict(tiny.state_dict())
    o2 = weighted(imgs, generator=torch.Generator().manual_seed(5))
    assert o2["loss"].item() == pytest.approx(2 * o2["l_mp"].item(), rel=1e-6)


def test_loss_falls_on_a_fixed_set(images):
    torch.manual_seed(0)
    m = ImageED(imageed_preset("tiny"))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, betas=(0.9, 0.95))

    def eval_loss():
        with torch.no_grad():
            return m(images, generator=torch.Generator().manual_seed(0))["loss"].item()
    before = eval_loss()
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = m(images, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


def test_features_are_mean_encoder_tokens_without_masking(tiny, images):
    tiny.eval()
    fu = tiny.features(images)
    assert fu.shape == (8, 64) and fu.dtype == torch.float32
    x = tiny.embed(images)
    for blk in tiny.blocks:
        x = blk(x)
    torch.testing.assert_close(fu, tiny.norm(x).mean(1))
    assert torch.equal(fu, tiny.features(images))  # no randomness
    assert not torch.allclose(fu[0], fu[1])


def test_wrong_image_shape_is_named(tiny):
    with pytest.raises(ValueError, match=r"\(B, 6, 4, 32, 32\)"):
        tiny(torch.rand(1, 4, 4, 32, 32))


def test_reconstruction_figure(tiny, images, tmp_path):
    from PIL import Image
    path = tmp_path / "fig5.png"
    save_reconstruction_png(tiny, images, path, max_molecules=2)
    im = np.asarray(Image.open(path))
    # rows: 2 molecules x 6 views; columns: input/masked/recon for RGB then D; 1-px frame per panel
    assert im.shape == (2 * 6 * 34, 6 * 34, 3)
    masked, recon = tiny.reconstruct(images[:1], generator=torch.Generator().manual_seed(0))
    pix_masked = (masked == 0.5).all(2)  # grey patches
    assert 0 < pix_masked.float().mean() < 0.5
    vis = ~pix_masked[:, :, None].expand_as(recon)
    torch.testing.assert_close(recon[vis], images[:1][vis])  # visible patches are pasted from the input


def test_save_and_load(tiny, tmp_path):
    from edg.train.io.model_files import imageed_state
    torch.save(imageed_state(tiny), tmp_path / "imageed.pt")
    m = load_imageed(tmp_path)
    x = torch.rand(1, 6, 4, 32, 32)
    tiny.eval()
    assert torch.equal(m.features(x), tiny.features(x))
