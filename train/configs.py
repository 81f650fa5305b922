"""Training configs importable without torch or timm (the ``edg`` CLI builds its flags from them): the ImageED
model and its presets, the teacher model and its presets, the two pretraining configs, the student
``FitConfig`` and the representation study's ``RepresentationConfig``. Defaults reproduce the paper and its
official code; ``train.models.imageed``, ``train.models.teacher``, ``train.loops.pretrain``, ``train.loops.distill`` and
``train.loops.representation`` re-export them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from edg.edg_core.errors import EDGError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB normalisation of the pretrained image backbones (timm's)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageEDConfig:
    """Model sizes; the defaults are the paper's ViT-B/16 MAE at 224 x 224."""
    img_size: int = field(default=224, metadata={"help": "image side in pixels"})
    patch_size: int = field(default=16, metadata={"help": "patch side in pixels"})
    n_views: int = field(default=6, metadata={"help": "ED views per molecule"})
    in_chans: int = field(default=4, metadata={"help": "channels per view (RGB-D)"})
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    mask_ratio: float = field(default=0.25, metadata={"help": "fraction of all tokens masked"})
    view_embedding: bool = field(default=True, metadata={"help": "add a learned per-view embedding (ablation: off)"})
    cls_token: bool = field(default=False, metadata={
        "help": "prepend a learned class token to the encoder and decoder sequences (the authors' MAE has one; "
                "set for an imported checkpoint); F_U stays the mean of the patch tokens"})
    norm_eps: float = field(default=1e-6, metadata={"help": "LayerNorm epsilon (the authors' MAE: 1e-6)"})
    norm_pix_loss: bool = field(default=True, metadata={"help": "normalise pixel targets per patch"})
    mp_weight: float = field(default=1.0, metadata={"help": "weight of L_MP (masked-patch loss)"})
    rp_weight: float = field(default=1.0, metadata={"help": "weight of L_RP (visible-patch loss)"})

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per view."""
        return self.grid_size ** 2

    @property
    def num_tokens(self) -> int:
        return self.n_views * self.num_patches

    @property
    def num_visible(self) -> int:
        return int(self.num_tokens * (1 - self.mask_ratio))


IMAGEED_PRESETS = {
    "vit_b16": ImageEDConfig(),
    # exactly the authors' model (ImageED/models_mae_multi_view_RGBD.py mae_vit_base_patch16, in_chans=4): their
    # class token, no view embedding; 111,983,616 trainable parameters as theirs (tests/test_import_assets.py)
    "paper": ImageEDConfig(view_embedding=False, cls_token=True),
    "tiny": ImageEDConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                          decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4),
}


def imageed_preset(name: str, **overrides) -> ImageEDConfig:
    if name not in IMAGEED_PRESETS:
        raise ValueError(f"unknown ImageED preset {name!r}; known: {sorted(IMAGEED_PRESETS)}")
    return replace(IMAGEED_PRESETS[name], **overrides)


@dataclass
class TeacherConfig:
    """Teacher model, its starting weights and its training augmentations. Defaults follow the authors' code
    (``ED_teacher/``): timm ``resnet18`` from ImageNet weights (``pretrained=True``); torchvision
    ``RandomApply(p=0.2)``, drawn for every view image on its own, of ``RandomRotation(360)`` (nearest, black
    fill) and ``GaussianBlur(3, sigma 0.1-2.0)`` (their ``CenterCrop(224)`` after ``Resize(224)`` is a no-op)."""
    arch: str = field(default="resnet18", metadata={"help": "timm backbone name (head removed)"})
    pretrained: bool = field(default=True, metadata={
        "help": "start the backbone from ImageNet weights (timm hub, or --model.pretrained-weights); "
                "--no-model.pretrained: random init (from scratch)"})
    pretrained_weights: str | None = field(default=None, metadata={
        "help": "local file with the backbone's starting weights (a state dict, .pth/.pt/.safetensors; classifier "
                "keys dropped), used instead of the hub, e.g. on an offline cluster"})
    n_views: int = field(default=4, metadata={"help": "structure views per molecule"})
    img_size: int = field(default=224, metadata={"help": "image side in pixels"})
    hidden_dim: int = field(default=256, metadata={"help": "ED predictor hidden width"})
    fu_dim: int = field(default=768, metadata={"help": "width of F_U (ImageED embed_dim)"})
    aug_p: float = field(default=0.2, metadata={"help": "probability of each augmentation (train only)"})
    aug_per_view: bool = field(default=True, metadata={
        "help": "draw each augmentation for every view on its own (the authors'); off: one draw per molecule, "
                "shared by its views"})
    max_rotation_deg: float = field(default=360.0, metadata={"help": "rotation angle drawn uniformly from +-this"})
    rotation_fill: str = field(default="black", metadata={
        "help": "corners uncovered by a rotation: black (the authors', torchvision fill 0) or border (edge pixels)"})
    rotation_interpolation: str = field(default="nearest", metadata={
        "help": "nearest (torchvision RandomRotation's default, the authors') or bilinear"})
    crop_scale: float = field(default=1.0, metadata={
        "help": "zoom: centre crop keeping this fraction of the side, resized back; 1.0 = no zoom (the authors')"})
    blur_kernel: int = field(default=3, metadata={
        "help": "Gaussian blur taps (odd; the authors': 3); 0 = 2 ceil(3 sigma) + 1 taps, up to 13 at sigma 2"})
    blur_sigma: tuple[float, float] = field(default=(0.1, 2.0), metadata={"help": "Gaussian blur sigma range, px"})

    def __post_init__(self):
        if self.pretrained_weights and not self.pretrained:
            raise ValueError("teacher: pretrained_weights is given but pretrained is off; drop one of them")
        if self.rotation_fill not in ("black", "border"):
            raise ValueError(f"teacher: rotation_fill must be 'black' or 'border', got {self.rotation_fill!r}")
        if self.rotation_interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"teacher: rotation_interpolation must be 'nearest' or 'bilinear', "
                             f"got {self.rotation_interpolation!r}")
        if self.blur_kernel < 0 or (self.blur_kernel and self.blur_kernel % 2 == 0):
            raise ValueError(f"teacher: blur_kernel must be 0 or odd, got {self.blur_kernel}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"teacher: crop_scale must be in (0, 1], got {self.crop_scale}")


# What this project used before following the authors' code, kept as options (docs/pretrain.md):
EARLIER_TEACHER_AUGMENTATION = dict(aug_per_view=False, max_rotation_deg=180.0, rotation_fill="border",
                                    rotation_interpolation="bilinear", crop_scale=0.8, blur_kernel=0)


TEACHER_PRESETS = {
    "resnet18": TeacherConfig(),
    "tiny": TeacherConfig(arch="resnet10t", pretrained=False, img_size=32, hidden_dim=32, fu_dim=64),
}


@dataclass
class ImageEDTrainConfig:
    """ImageED pretraining (paper / official code: 800 epochs, 5 warm-up, blr 1.5e-4, wd 0.05)."""
    model: ImageEDConfig = field(default_factory=ImageEDConfig)
    epochs: int = 800
    warmup_epochs: int = 5
    batch_size: int = field(default=64, metadata={"help": "per worker; the global batch sets the lr"})
    blr: float = field(default=1.5e-4, metadata={"help": "base lr; lr = blr * global_batch / 256"})
    lr: float | None = field(default=None, metadata={"help": "absolute lr (overrides blr)"})
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    val_fraction: float = field(default=0.0, metadata={"help": "fraction of keys held out for validation"})
    samples_per_epoch: int | None = field(default=None, metadata={"help": "default: count the train samples"})
    shuffle_buffer: int = 1000
    max_bad_samples: int | None = field(default=None, metadata={
        "help": "bad samples (damaged, missing members, wrong shape) skipped per pass before training stops; "
                "unset: $EDG_MAX_BAD_SAMPLES, else 100"})
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers per rank"})
    seed: int = 0
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (ignored on CPU)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    tf32: bool = field(default=True, metadata={"help": "TF32 matmuls and convolutions on CUDA"})
    grad_clip: float | None = None
    figure_every: int = field(default=0, metadata={"help": "write a reconstruction PNG every N epochs (0: off)"})
    checkpoint_every: int = field(default=5, metadata={
        "help": "epochs between resumable checkpoints (and after the last; 0: only after the last)"})
    keep_last: int = field(default=1, metadata={"help": "resumable checkpoints kept (newest first); a best.pt "
                                                        "beside them when there is a validation split"})


@dataclass
class TeacherTrainConfig:
    """Teacher pretraining (paper / official code: SGD lr 5e-3 constant, momentum 0.9, wd 1e-4, batch 128,
    50 epochs, 2 % validation)."""
    model: TeacherConfig = field(default_factory=TeacherConfig)
    epochs: int = 50
    warmup_epochs: int = 0
    batch_size: int = field(default=128, metadata={"help": "per worker"})
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    cosine: bool = field(default=False, metadata={
        "help": "cosine-decay the lr to 0 over the epochs (this project's earlier default); off: constant lr, as "
                "the authors' code (no scheduler)"})
    val_fraction: float = 0.02
    samples_per_epoch: int | None = None
    shuffle_buffer: int = 1000
    max_bad_samples: int | None = field(default=None, metadata={
        "help": "bad samples (damaged, missing members, wrong shape) skipped per pass before training stops; "
                "unset: $EDG_MAX_BAD_SAMPLES, else 100"})
    num_workers: int = 4
    seed: int = 0
    bf16: bool = True
    compile: bool = False
    tf32: bool = field(default=True, metadata={"help": "TF32 matmuls and convolutions on CUDA"})
    grad_clip: float | None = None
    checkpoint_every: int = field(default=1, metadata={
        "help": "epochs between resumable checkpoints (and after the last; 0: only after the last)"})
    keep_last: int = field(default=1, metadata={"help": "resumable checkpoints kept; best.pt beside them"})


_PAPER = "; unset (None): the paper's value for the student and dataset (docs/students.md)"

GEOM3D_QM9_FIT = {"epochs": 1000, "batch_size": 128, "eval_batch_size": 128, "lr": 5e-4, "loss": "l1",
                  "scheduler": "cosine", "warmup_steps": 0, "select_ema": 0.0, "early_stopping_patience": 0}
"""The Geom3D QM9 training settings (``train.paper_settings`` builds its Geom3D entries from them), and what
``FitConfig.filled`` puts in fields still ``None``: selection on the task's validation metric, no early stop."""


@dataclass
class FitConfig:
    """Student training settings. Fields left ``None`` take the paper's value for the student and dataset
    family (``train.paper_settings``; ``DistillConfig.resolved()``); ``train_student`` alone falls back to the
    Geom3D QM9 values (1000 epochs, batch 128, lr 5e-4, L1, cosine)."""
    epochs: int | None = field(default=None, metadata={"help": "training epochs" + _PAPER})
    batch_size: int | None = field(default=None, metadata={"help": "training molecules per step" + _PAPER})
    eval_batch_size: int | None = field(default=None, metadata={"help": "molecules per evaluation batch" + _PAPER})
    lr: float | None = field(default=None, metadata={"help": "Adam learning rate" + _PAPER})
    loss: str | None = field(default=None, metadata={"help": "task loss: l1 or mse" + _PAPER})
    scheduler: str | None = field(default=None, metadata={
        "help": "cosine (to 0 over the epochs), plateau (ReduceLROnPlateau on the validation selection metric) "
                "or none" + _PAPER})
    warmup_steps: int | None = field(default=None, metadata={
        "help": "linear lr warm-up over this many optimiser steps (0: none)" + _PAPER})
    plateau_factor: float = field(default=0.8, metadata={"help": "plateau: lr factor on a plateau"})
    plateau_patience: int = field(default=30, metadata={"help": "plateau: epochs without improvement"})
    min_lr: float = field(default=1e-7, metadata={"help": "plateau: lower bound of the lr"})
    select_ema: float | None = field(default=None, metadata={
        "help": "select (and run plateau) on the authors' ViSNet validation loss: per validation batch the MSE "
                "task loss with its energy term replaced by an EMA over validation batches (carried across epochs; "
                "this value is the newest batch's weight, ViSNet's loss_scale_y 0.05), averaged over the batches; "
                "0: off, select on the task's select_metric" + _PAPER})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "stop when the selection metric has not improved for this many epochs, or is not finite "
                "(Lightning's EarlyStopping, as the authors' ViSNet: 600); 0: off" + _PAPER})
    weight_decay: float = 0.0
    grad_clip: float | None = None     # max grad norm; None: no clipping
    seed: int = 42
    device: str = "auto"               # auto: CUDA when a GPU is visible, else CPU (train/devices.py)
    num_threads: int | None = None     # torch CPU threads (None: torch's default)
    compile: bool = field(default=False, metadata={"help": "torch.compile the student's training forward"})
    tf32: bool = field(default=True, metadata={"help": "TF32 matmuls on CUDA"})
    checkpoint_every: int = 1          # epochs between resumable checkpoints (0: only after the last)
    keep_last: int = 1                 # resumable checkpoints kept (best_student.pt is written at the end)

    def filled(self) -> FitConfig:
        """This config with fields still ``None`` set to the Geom3D QM9 values (what ``train_student`` uses)."""
        return replace(self, **{k: v for k, v in GEOM3D_QM9_FIT.items() if getattr(self, k) is None})


# ---------------------------------------------------------------- representation study (Table 4)
TARGETS = ("E1", "E2", "E3", "E4", "E5", "E6")
REPRESENTATIONS = ("pointnet", "voxel", "image")


@dataclass
class RepresentationConfig:
    """The study's settings. Sizes in bohr, densities in e/bohr^3."""
    reps: tuple[str, ...] = field(default=REPRESENTATIONS, metadata={"help": "representations to train"})
    seed: int = field(default=42, metadata={"help": "seed of split, sampling, init and shuffling"})
    split: tuple[float, float, float] = field(default=(0.8, 0.1, 0.1), metadata={
        "help": "train/validation/test fractions of the molecules (seeded random split)"})
    atom_refs: bool = field(default=True, metadata={
        "help": "subtract per-element atom references fitted by least squares on the training set"})
    epochs: int = field(default=100, metadata={"help": "training epochs per representation"})
    batch_size: int = field(default=8, metadata={"help": "molecules per batch"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (cosine to 0)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    n_points: int = field(default=1024, metadata={"help": "points per molecule in the ED point cloud"})
    point_iso: float = field(default=1e-3, metadata={"help": "points are drawn only where rho > this (e/bohr^3)"})
    point_jitter: bool = field(default=True, metadata={"help": "spread each point uniformly inside its grid cell"})
    voxel_size: int = field(default=32, metadata={"help": "voxels per side of the resampled ED cube"})
    voxel_box_bohr: float = field(default=24.0, metadata={"help": "side of the voxel cube (bohr)"})
    voxel_width: int = field(default=16, metadata={"help": "channels of the first 3-D ResNet stage"})
    image_arch: str = field(default="resnet18", metadata={"help": "timm backbone of the image model (random init)"})
    device: str = field(default="auto", metadata={"help": "torch device (auto: CUDA when visible, else CPU)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile each model's training forward"})
    tf32: bool = field(default=True, metadata={"help": "TF32 matmuls and convolutions on CUDA"})
    checkpoint_every: int = field(default=10, metadata={
        "help": "epochs between resumable checkpoints of each representation (0: none)"})
    keep_last: int = field(default=1, metadata={"help": "resumable checkpoints kept per representation"})

    def __post_init__(self):
        bad = [r for r in self.reps if r not in REPRESENTATIONS]
        if bad:
            raise EDGError(f"unknown representation(s) {bad}; choose from {REPRESENTATIONS}")
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) <= 0:
            raise EDGError(f"split must be three non-negative fractions, got {self.split}")


# ---------------------------------------------------------------- representations of one molecule
