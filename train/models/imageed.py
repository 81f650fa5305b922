"""ImageED: a multi-view masked autoencoder over the 6 RGB-D electron-density images of a molecule.

One patch embedding is shared by all views (view-agnostic); the tokens of the 6 views are concatenated
view-first (token ``v * L + p`` is patch ``p`` of view ``v``; ``L = (img_size / patch_size)^2``, 6 x 196 = 1176
at 224/16). Every view gets the same fixed 2-D sin-cos position embedding; an optional learned view embedding
(``view_embedding``, on by default, an addition to the paper's model) tells the views apart. A random 25 % of
all tokens is masked; the loss is ``mp_weight * L_MP`` (masked tokens) + ``rp_weight * L_RP`` (visible tokens),
each the mean squared error to per-patch normalised pixels. ``features`` gives F_U, the mean of the encoder
tokens of all views without masking.

Input images are ``(B, V, 4, H, W)`` floats in [0, 1] (as decoded from ``edimg`` in the shards); RGB is
normalised with the ImageNet mean/std inside the model, the D channel is left in [0, 1].
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from edg.train.configs import IMAGEED_PRESETS, IMAGENET_MEAN, IMAGENET_STD, ImageEDConfig, imageed_preset  # noqa: F401
from timm.models.vision_transformer import Block


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (grid_size^2, dim), row-major over the patch grid.

    Half of the channels encode the row, half the column; each half is [sin(pos * w), cos(pos * w)] with
    frequencies w_k = 10000^(-k / (dim / 4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos):  # (P,) -> (P, dim / 2)
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def normalise_views(imgs: torch.Tensor) -> torch.Tensor:
    """(B, V, 4, H, W) in [0, 1] -> RGB standardised with ImageNet mean/std, D unchanged."""
    mean = imgs.new_tensor(IMAGENET_MEAN + (0.0,)).view(1, 1, 4, 1, 1)
    std = imgs.new_tensor(IMAGENET_STD + (1.0,)).view(1, 1, 4, 1, 1)
    return (imgs - mean) / std


class ImageED(nn.Module):
    def __init__(self, cfg: ImageEDConfig = ImageEDConfig()):
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        d, dd, p = cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_chans, d, kernel_size=p, stride=p)  # shared by all views
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, cfg.grid_size).repeat(cfg.n_views, 1)[None],
                             persistent=False)  # (1, V*L, D)
        self.view_embed = nn.Parameter(torch.zeros(1, cfg.n_views, 1, d)) if cfg.view_embedding else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.cls_token else None  # position embedding 0
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(cfg.depth))
        self.norm = norm(d)

        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed",
                             sincos_pos_embed_2d(dd, cfg.grid_size).repeat(cfg.n_views, 1)[None], persistent=False)
        self.decoder_view_embed = nn.Parameter(torch.zeros(1, cfg.n_views, 1, dd)) if cfg.view_embedding else None
        self.decoder_blocks = nn.ModuleList(Block(dd, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True,
                                                  norm_layer=norm) for _ in range(cfg.decoder_depth))
        self.decoder_norm = norm(dd)
        self.decoder_pred = nn.Linear(dd, p * p * cfg.in_chans)
        self._init_weights()

    def _init_weights(self):
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        for ve in (self.view_embed, self.decoder_view_embed):
            if ve is not None:
                nn.init.normal_(ve, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ layout
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, V, C, H, W) -> (B, V*L, p*p*C), tokens view-first, pixels (row, col, channel) inside a patch."""
        b, v, c, h, w = imgs.shape
        p, g = self.cfg.patch_size, self.cfg.grid_size
        x = imgs.reshape(b, v, c, g, p, g, p)
        return torch.einsum("bvchpwq->bvhwpqc", x).reshape(b, v * g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, V*L, p*p*C) -> (B, V, C, H, W); the inverse of ``patchify``."""
        cfg = self.cfg
        p, g, c, v = cfg.patch_size, cfg.grid_size, cfg.in_chans, cfg.n_views
        x = x.reshape(x.shape[0], v, g, g, p, p, c)
        return torch.einsum("bvhwpqc->bvchpwq", x).reshape(x.shape[0], v, c, g * p, g * p)

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, V, C, H, W) in [0, 1] -> tokens with positions (and view embedding), (B, V*L, D)."""
        b, v = imgs.shape[:2]
        if v != self.cfg.n_views or imgs.shape[2] != self.cfg.in_chans or imgs.shape[-1] != self.cfg.img_size:
            raise ValueError(f"ImageED expects images (B, {self.cfg.n_views}, {self.cfg.in_chans}, "
                             f"{self.cfg.img_size}, {self.cfg.img_size}), got {tuple(imgs.shape)}")
        x = self.patch_embed(normalise_views(imgs).flatten(0, 1))     # (B*V, D, g, g)
        x = x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])  # (B, V*L, D), view-first
        return x + self._positions(self.pos_embed, self.view_embed)

    def _positions(self, pos: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
        if view is None:
            return pos
        return pos + view.expand(-1, -1, self.cfg.num_patches, -1).reshape(1, -1, pos.shape[-1])

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """Keep a random ``1 - mask_ratio`` of the tokens of each sample.

        x (B, N, D) -> visible tokens (B, K, D), mask (B, N) with 1 = masked, ids_restore (B, N).
        """
        b, n, _ = x.shape
        keep = int(n * (1 - mask_ratio))
        noise = torch.rand(b, n, device=x.device, generator=generator)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :keep]
        visible = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        return visible, mask.gather(1, ids_restore), ids_restore

    # ------------------------------------------------------------------ MAE
    def forward_encoder(self, imgs, mask_ratio: float, generator=None):
        x = self.embed(imgs)                                              # (B, N, D)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)  # (B, K, D)
        x = self._with_cls(x)                                             # (B, 1 + K, D) with a class token
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def _with_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class token (its position embedding is zero, as in the authors' MAE) when configured."""
        if self.cls_token is None:
            return x
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)                                         # (B, [1 +] K, Dd)
        cls, x = (x[:, :1], x[:, 1:]) if self.cls_token is not None else (None, x)
        b, k, dd = x.shape
        masks = self.mask_token.expand(b, ids_restore.shape[1] - k, -1)
        x = torch.cat([x, masks], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, dd))  # (B, N, Dd)
        x = x + self._positions(self.decoder_pos_embed, self.decoder_view_embed)
        if cls is not None:
            x = torch.cat([cls, x], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        return pred[:, 1:] if cls is not None else pred                  # (B, N, p*p*C)

    def pixel_targets(self, imgs):
        """Per-patch targets (B, N, p*p*C): normalised images, each patch standardised if ``norm_pix_loss``."""
        target = self.patchify(normalise_views(imgs))
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, imgs, pred, mask):
        """-> (loss, L_MP, L_RP): mean squared error per patch, averaged over masked / visible patches."""
        per_patch = ((pred.float() - self.pixel_targets(imgs)) ** 2).mean(-1)  # (B, N)
        l_mp = (per_patch * mask).sum() / mask.sum().clamp(min=1)
        l_rp = (per_patch * (1 - mask)).sum() / (1 - mask).sum().clamp(min=1)
        return self.cfg.mp_weight * l_mp + self.cfg.rp_weight * l_rp, l_mp, l_rp

    def forward(self, imgs, mask_ratio: float | None = None, generator=None):
        """imgs (B, V, C, H, W) in [0, 1] -> dict(loss, l_mp, l_rp, pred (B, N, p*p*C), mask (B, N))."""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        loss, l_mp, l_rp = self.forward_loss(imgs, pred, mask)
        return {"loss": loss, "l_mp": l_mp, "l_rp": l_rp, "pred": pred, "mask": mask}

    @torch.no_grad()
    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """F_U: mean of the encoder's patch tokens of all views (a class token, if any, left out), no masking.
        (B, V, C, H, W) -> (B, D) float32."""
        x = self._with_cls(self.embed(imgs))
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return (x[:, 1:] if self.cls_token is not None else x).mean(dim=1).float()

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float | None = None, generator=None):
        """For figures: (masked input, reconstruction), both (B, V, C, H, W) in [0, 1].

        Masked patches of the input are set to grey (0.5); the reconstruction pastes the visible input
        patches and fills the masked ones with predictions, de-normalised with each patch's own input
        mean/std when ``norm_pix_loss`` is on (as in the MAE demo)."""
        out = self(imgs, mask_ratio, generator)
        pred, mask = out["pred"].float(), out["mask"][..., None]
        target = self.patchify(normalise_views(imgs))
        if self.cfg.norm_pix_loss:
            pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
        pix = self.patchify(imgs)
        denorm = self._denormalise(self.unpatchify(pred))
        recon = self.unpatchify(pix * (1 - mask)) + self.unpatchify(self.patchify(denorm) * mask)
        masked = self.unpatchify(pix * (1 - mask) + 0.5 * mask)
        return masked, recon.clamp(0, 1)

    @staticmethod
    def _denormalise(x):
        mean = x.new_tensor(IMAGENET_MEAN + (0.0,)).view(1, 1, 4, 1, 1)
        std = x.new_tensor(IMAGENET_STD + (1.0,)).view(1, 1, 4, 1, 1)
        return x * std + mean


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ImageEDConfig", "ImageED", "IMAGEED_PRESETS", "imageed_preset", "sincos_pos_embed_2d",
           "normalise_views", "n_params"]
