"""Stage workers that run a trained model over shard samples (``cluster.stages.run_extract``, the pipeline):
``FeatureExtractor`` (ImageED -> F_U) and ``TargetExtractor`` (teacher -> F_S, EDP(F_S)), on ``ShardAnnotator``."""
from __future__ import annotations

import numpy as np
import torch
from edg.edg_core.shards import npy_bytes
from edg.edg_core.stage import BatchResult, Failure
from edg.train.devices import resolve_device
from edg.train.io.model_files import load_imageed, load_teacher
from edg.train.models.imageed import ImageED
from edg.train.models.teacher import Teacher


class ShardAnnotator:
    """A stage worker (``cluster.engine``) that runs a model once per raw shard sample having image ``member``
    ('edimg' or 'stimg') and adds its ``outputs`` as ``<name>.npy`` members.

    Subclasses give ``member`` and ``outputs(images (B, V, C, H, W) float32 in [0, 1], on the model's device)
    -> {name: (B, ...) tensor}``; the model runs in eval mode, without gradients, in bf16 autocast on a GPU when
    ``bf16``. Samples without ``member`` are passed through unchanged (images dropped if ``drop_images``); the
    names of the new members are listed in the sample's ``__outputs__`` (not written to shards). A sample whose
    images cannot be decoded, or that the shard reader marked as damaged, is a ``Failure`` naming the shard and
    the key.
    """
    stage = "extract"
    member = "edimg"

    def __init__(self, model: torch.nn.Module, device=None, bf16: bool = False, drop_images: bool = False):
        import contextlib
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and self.device.type == "cuda" \
            else contextlib.nullcontext()
        self.drop_images = drop_images

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def compute(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast:
            return self.outputs(images.to(self.device))

    def process_batch(self, raws: list[dict]) -> BatchResult:
        from edg.edg_core.shards import decode_images_u8
        res, todo = BatchResult(), []
        for raw in raws:
            where = f"{raw.get('__url__', '?')}:{raw['__key__']}"
            if raw.get("__error__"):
                res.failures.append(Failure.of(where, self.stage, raw["__error__"], raw["__key__"]))
                continue
            enc = next((k for k in raw if k.split(".")[0] == self.member), None)
            if enc is None:
                res.samples.append(_strip(raw, self.drop_images))
                continue
            try:
                todo.append((raw, decode_images_u8(raw[enc], enc.split(".", 1)[1])))
            except Exception as e:  # noqa: BLE001 (any decoding problem costs this sample only)
                res.failures.append(Failure.of(where, self.stage, f"member {enc!r} cannot be decoded ({e})",
                                               raw["__key__"]))
        by_shape: dict[tuple, list] = {}
        for raw, img in todo:
            by_shape.setdefault(img.shape, []).append((raw, img))
        for group in by_shape.values():
            imgs = torch.from_numpy(np.stack([img for _, img in group])).float() / 255.0
            out = {k: v.detach().float().cpu().numpy() for k, v in self.compute(imgs).items()}
            for i, (raw, _) in enumerate(group):
                res.samples.append({**_strip(raw, self.drop_images), "__outputs__": sorted(out),
                                    **{f"{k}.npy": npy_bytes(v[i]) for k, v in out.items()}})
        return res


def _strip(raw: dict, drop_images: bool) -> dict:
    return {k: v for k, v in raw.items()
            if k == "__key__" or not (k.startswith("__") or (drop_images and k.split(".")[0] in ("edimg", "stimg")))}



class FeatureExtractor(ShardAnnotator):
    """A stage worker (``cluster.stages.run_extract``): F_U (``fu.npy``, (embed_dim,) float32) for every shard
    sample with ED images, from ``model`` (an ``ImageED`` or a path ``load_imageed`` reads)."""
    member = "edimg"

    def __init__(self, model, device=None, bf16: bool = True, drop_images: bool = False):
        super().__init__(model if isinstance(model, ImageED) else load_imageed(model), device, bf16, drop_images)

    def outputs(self, images):
        return {"fu": self.model.features(images)}



class TargetExtractor(ShardAnnotator):
    """A stage worker (``cluster.stages.run_extract``): the teacher once per conformation with structure
    images, storing F_S (``fs.npy``) and EDP(F_S) (``edp.npy``). Eval mode, no augmentation, float32 unless
    ``bf16``; student training reads these instead of running the teacher. ``model``: a ``Teacher`` or a path
    ``load_teacher`` reads."""
    member = "stimg"

    def __init__(self, model, device=None, bf16: bool = False, drop_images: bool = False):
        super().__init__(model if isinstance(model, Teacher) else load_teacher(model), device, bf16, drop_images)

    def outputs(self, images):
        fs, edp = self.model(images)
        return {"fs": fs, "edp": edp}

