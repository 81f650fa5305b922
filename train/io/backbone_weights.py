"""The teacher backbone's starting weights: a local file (``cfg.pretrained_weights``: ``.safetensors`` or a
plain-data torch file) or timm's ImageNet weights from the Hugging Face hub (``cfg.pretrained``, the
authors' start). ``init_backbone(teacher)`` loads them into a fresh teacher; a teacher loaded from its own
checkpoint never needs them."""
from __future__ import annotations

from pathlib import Path

from edg.edg_core.errors import EDGError
from edg.train.models.teacher import Teacher


def init_backbone(teacher: Teacher) -> Teacher:
    """Load the backbone's starting weights as configured and return ``teacher``: the file
    ``cfg.pretrained_weights``, else timm's ImageNet weights from the hub (``cfg.pretrained``), else nothing
    (random init). Classifier keys are dropped; any other mismatch is an ``EDGError`` (``Teacher.load_backbone``)."""
    cfg = teacher.cfg
    if not cfg.pretrained:
        return teacher
    path = Path(cfg.pretrained_weights) if cfg.pretrained_weights else None
    return teacher.load_backbone(_weights_file(path) if path else _hub_weights(cfg.arch),
                                 str(path or "timm hub weights"))


def _weights_file(path: Path) -> dict:
    """A state dict from a local file: ``.safetensors``, or a torch file of tensors (plain data only), possibly
    wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``."""
    if not path.is_file():
        raise EDGError(f"teacher: pretrained weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    from edg.train.io.checkpoint import load_checkpoint
    state = load_checkpoint(path, "cpu", "teacher pretrained weights")
    return state.get("state_dict", state.get("model", state))


def _hub_weights(arch: str) -> dict:
    """timm's pretrained (ImageNet) weights for ``arch`` from the Hugging Face hub or its local cache."""
    import timm
    try:
        return timm.create_model(arch, pretrained=True, num_classes=0).state_dict()
    except Exception as e:  # no network, nothing cached, no weights for this arch: the way out is the same
        why = (str(e).splitlines() or [""])[0][:160]
        raise EDGError(f"teacher: cannot get pretrained weights for {arch!r} from the timm hub ({type(e).__name__}: "
                       f"{why}); give a local file with --model.pretrained-weights FILE, or train from random "
                       f"weights with --no-model.pretrained (YAML: model: {{pretrained: false}})") from None

