"""Import the assets the EDG authors released (github.com/HongxinXiang/EDG) into this project's formats.

* ImageED ViT-B/16 checkpoint, MAE style: ``{"model": MaskedAutoencoderViT state dict, "optimizer", "epoch",
  "scaler", "args"}`` -> our ``imageed.pt`` (``load_imageed``).
* ``ED-aware-Teacher.pth``: ``{"ED_teacher": timm ResNet under "model." (head = Identity), "EDPredictor":
  "network.linear1/2", ...}`` -> our ``teacher.pt`` (``load_teacher``, ``load_ed_predictor``).
* ``200w_ED_feats.pkl``, a pickle ``{"feats": (N, 768) array, "ED_index_list": N ids}`` -> F_U as an ``.npz``
  (``ids``, ``fu``) or as shards with ``fu.npy``.
* ``teacher_features.npz``: ``drug_id`` (N,), ``feats`` (N, 512) = F_S -> teacher targets, an ``.npz`` (``ids``,
  ``fs`` [, ``edp``]).

Torch files are read with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for the MAE
``args``), the pickle and object arrays with ``edg_core.safe_pickle`` (plain data only): none of these files
can run code when imported. Every importer works from key names and shapes, so it takes any model size in
the authors' layout. Their molecule ids become ours through ``id_format`` (``"{}"``: as is; ``"qm9:{}"`` with
``strip_prefix="gdb_"`` for QM9 names), or, for rMD17, through the archive file's ``old_indices``
(``rmd17_archive``: they number frames by archive row, we by MD17 trajectory index).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch
from edg.edg_core.errors import EDGError
from edg.edg_core.io import atomic_path
from edg.edg_core.safe_pickle import UnsafePickleError, safe_load, safe_load_npz, safe_torch_load
from edg.train.configs import ImageEDConfig, TeacherConfig

log = logging.getLogger(__name__)

# heads of the authors' MAE presets (models_mae_multi_view_RGBD.py): not recoverable from weight shapes
MAE_HEADS = {"mae_vit_base_patch16": (12, 16), "mae_vit_large_patch16": (16, 16), "mae_vit_huge_patch14": (16, 16)}
_FIXED = ("pos_embed", "decoder_pos_embed")  # their fixed sin-cos embeddings (ours are computed buffers)


class AssetFormatError(EDGError):
    """A file is not in the authors' format (named key or shape missing or wrong)."""


def _torch_file(path: Path, what: str) -> dict:
    if not path.is_file():
        raise AssetFormatError(f"{what} {path} does not exist")
    try:
        obj = safe_torch_load(path, [argparse.Namespace])
    except UnsafePickleError as e:  # a refused global, an allocating constructor, a damaged file
        raise AssetFormatError(str(e)) from None
    if not isinstance(obj, dict):
        raise AssetFormatError(f"{path}: {what} holds a {type(obj).__name__}, expected a dict")
    return obj


def _save(state: dict, out: Path) -> Path:
    from edg.train.io.checkpoint import save_checkpoint
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(state, out)


# ---------------------------------------------------------------- ImageED
def imageed_key(theirs: str) -> str | None:
    """Our ImageED parameter name for one of theirs (None: their fixed position embeddings, recomputed here)."""
    if theirs in _FIXED:
        return None
    return "patch_embed." + theirs[len("patch_embed.proj."):] if theirs.startswith("patch_embed.proj.") else theirs


def _count(sd: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def imageed_config(sd: dict, n_views: int = 6, num_heads: int | None = None, decoder_num_heads: int | None = None,
                   args=None, where: str = "ImageED") -> ImageEDConfig:
    """Our ``ImageEDConfig`` for the authors' MAE state dict ``sd`` (shapes only; meta tensors are fine).

    Sizes come from the weights; the views split the token count (``n_views``, theirs: 6); the heads, which
    weights do not show, from ``args.model`` when the checkpoint has it, else ``num_heads`` / ``decoder_num_heads``
    or embed_dim / 64 and 16 (their ViT-B/L presets)."""
    need = ("patch_embed.proj.weight", "cls_token", "pos_embed", "mask_token", "decoder_embed.weight",
            "decoder_pred.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise AssetFormatError(f"{where}: not the authors' MAE state dict (missing {missing}; "
                               f"keys {sorted(sd)[:6]}...)")
    d, c, p, _ = sd["patch_embed.proj.weight"].shape
    n_tok = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_tok // n_views) if n_tok % n_views == 0 else 0
    if grid == 0 or grid * grid * n_views != n_tok:
        raise AssetFormatError(f"{where}: pos_embed has {n_tok} patch tokens, not {n_views} views of a square grid")
    heads = MAE_HEADS.get(getattr(args, "model", None))
    nh = num_heads or (heads[0] if heads else d // 64)
    dnh = decoder_num_heads or (heads[1] if heads else 16)
    kw = dict(mask_ratio=float(getattr(args, "mask_ratio", 0.25)),
              norm_pix_loss=bool(getattr(args, "norm_pix_loss", True)))
    try:
        return ImageEDConfig(img_size=grid * p, patch_size=p, n_views=n_views, in_chans=c, embed_dim=d,
                             depth=_count(sd, "blocks."), num_heads=nh,
                             decoder_embed_dim=sd["decoder_embed.weight"].shape[0],
                             decoder_depth=_count(sd, "decoder_blocks."), decoder_num_heads=dnh,
                             mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / d, view_embedding=False,
                             cls_token=True, norm_eps=1e-6, **kw)
    except (TypeError, ValueError) as e:
        raise AssetFormatError(f"{where}: {e}") from None


def imageed_from_authors(state: dict, n_views: int = 6, num_heads: int | None = None,
                         decoder_num_heads: int | None = None, where: str = "ImageED"):
    """Our ``ImageED`` (eval mode) holding the authors' MAE weights; ``state`` is their checkpoint dict or a
    bare state dict. Their fixed position embeddings must equal ours (checked), so the model computes the same."""
    from edg.train.models.imageed import ImageED
    sd = state.get("model", state)
    cfg = imageed_config(sd, n_views, num_heads, decoder_num_heads, state.get("args"), where)
    if cfg.embed_dim % cfg.num_heads or cfg.decoder_embed_dim % cfg.decoder_num_heads:
        raise AssetFormatError(f"{where}: {cfg.num_heads}/{cfg.decoder_num_heads} heads do not divide "
                           f"{cfg.embed_dim}/{cfg.decoder_embed_dim}; give --num-heads / --decoder-num-heads")
    model = ImageED(cfg)
    for name, ours in (("pos_embed", model.pos_embed), ("decoder_pos_embed", model.decoder_pos_embed)):
        theirs = sd.get(name)
        if theirs is None or tuple(theirs.shape) != (1, 1 + ours.shape[1], ours.shape[2]):
            shape = None if theirs is None else tuple(theirs.shape)
            raise AssetFormatError(f"{where}: {name} missing or of shape {shape}")
        err = max(float(theirs[0, 0].abs().max()), float((theirs[0, 1:].float() - ours[0]).abs().max()))
        if err > 1e-4:
            raise AssetFormatError(f"{where}: {name} is not the fixed 2-D sin-cos embedding (max difference {err:.2g})")
    mapped = {imageed_key(k): v for k, v in sd.items() if imageed_key(k) is not None}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise AssetFormatError(f"{where}: does not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def import_imageed(src, out, n_views: int = 6, num_heads: int | None = None,
                   decoder_num_heads: int | None = None) -> dict:
    """The authors' ImageED checkpoint ``src`` -> our ``imageed.pt`` at ``out``; returns a summary."""
    from edg.train.io.model_files import imageed_state
    from edg.train.models.imageed import n_params
    src, out = Path(src), Path(out)
    model = imageed_from_authors(_torch_file(src, "ImageED checkpoint"), n_views, num_heads, decoder_num_heads,
                                 str(src))
    _save(imageed_state(model), out)
    c = model.cfg
    return {"out": str(out), "params": n_params(model), "embed_dim": c.embed_dim, "depth": c.depth,
            "img_size": c.img_size, "patch_size": c.patch_size, "n_views": c.n_views, "in_chans": c.in_chans}


# ---------------------------------------------------------------- teacher + ED predictor
def teacher_from_authors(state: dict, arch: str = "resnet18", img_size: int = 224, where: str = "teacher"):
    """Our ``Teacher`` (eval mode) from their ``{"ED_teacher": ..., "EDPredictor": ...}`` checkpoint dict."""
    from edg.train.models.teacher import Teacher
    for k in ("ED_teacher", "EDPredictor"):
        if not isinstance(state.get(k), dict):
            raise AssetFormatError(f"{where}: no {k!r} state dict (keys {sorted(state)[:8]}); expected the authors' "
                               f"ED-aware-Teacher.pth")
    backbone = {k[len("model."):]: v for k, v in state["ED_teacher"].items() if k.startswith("model.")}
    if len(backbone) != len(state["ED_teacher"]):
        raise AssetFormatError(f"{where}: ED_teacher keys must all start with 'model.' (their Backboneredictor)")
    edp = state["EDPredictor"]
    try:
        w1, b1, w2, b2 = (edp[f"network.linear{i}.{t}"] for i in (1, 2) for t in ("weight", "bias"))
    except KeyError as e:
        raise AssetFormatError(f"{where}: EDPredictor lacks {e} (their Predictor: network.linear1/2)") from None
    if w2.shape[1] != w1.shape[0]:
        raise AssetFormatError(f"{where}: EDPredictor linear1 {tuple(w1.shape)} and linear2 {tuple(w2.shape)} "
                               f"do not chain")
    cfg = TeacherConfig(arch=arch, pretrained=False, img_size=img_size, hidden_dim=w1.shape[0], fu_dim=w2.shape[0])
    model = Teacher(cfg)
    if model.fs_dim != w1.shape[1]:
        raise AssetFormatError(f"{where}: EDPredictor takes {w1.shape[1]} features; {arch} gives {model.fs_dim}")
    model.load_backbone(backbone, where, AssetFormatError,
                        "{where}: ED_teacher does not fit {arch} ({why}); pass the right --arch")
    model.ed_predictor.load_state_dict({"0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": b2})
    return model.eval()


def import_teacher(src, out, arch: str = "resnet18", img_size: int = 224) -> dict:
    """The authors' ``ED-aware-Teacher.pth`` -> our ``teacher.pt`` (``edg extract teacher-targets --teacher``,
    ``edg distill --ed-predictor``); returns a summary."""
    from edg.train.io.model_files import teacher_state
    src, out = Path(src), Path(out)
    model = teacher_from_authors(_torch_file(src, "teacher checkpoint"), arch, img_size, str(src))
    _save(teacher_state(model), out)
    return {"out": str(out), "arch": arch, "fs_dim": model.fs_dim, "ed_predictor": list(model.ed_predictor.dims)}


# ---------------------------------------------------------------- features
def map_ids(raw, id_format: str = "{}", strip_prefix: str = "") -> list[str]:
    """Their ids (ints or strings) as ours: ``strip_prefix`` removed, then ``id_format.format(id)``."""
    if "{}" not in id_format:
        raise EDGError(f"id format {id_format!r} needs a '{{}}' where their id goes")
    out = []
    for x in raw:
        s = str(x.item() if isinstance(x, np.generic) else x)
        out.append(id_format.format(s[len(strip_prefix):] if strip_prefix and s.startswith(strip_prefix) else s))
    if len(set(out)) != len(out):
        raise EDGError(f"ids are not unique after mapping with {id_format!r} (first {out[:3]})")
    return out


def read_ed_features(path) -> tuple[list, np.ndarray]:
    """(their ids, F_U (N, D) float32) from ``200w_ED_feats.pkl``, read with the plain-data unpickler."""
    path = Path(path)
    if not path.is_file():
        raise EDGError(f"ED features {path} do not exist")
    d = safe_load(path)
    if not isinstance(d, dict) or "feats" not in d:
        raise AssetFormatError(f"{path}: expected a dict with 'feats' and 'ED_index_list', got "
                           f"{type(d).__name__}{' keys ' + str(sorted(d)) if isinstance(d, dict) else ''}")
    ids = d.get("ED_index_list", d.get("structural_image_index_list"))  # the name their loader reads
    feats = np.asarray(d["feats"], dtype=np.float32)
    if ids is None or feats.ndim != 2 or len(ids) != feats.shape[0]:
        raise AssetFormatError(f"{path}: 'feats' {feats.shape} and the id list ({None if ids is None else len(ids)}) "
                           f"do not pair up")
    return list(ids), feats


def import_ed_features(src, out, id_format: str = "{}", strip_prefix: str = "", shards=None) -> dict:
    """F_U from ``200w_ED_feats.pkl``: to ``out`` ending in ``.npz`` (``ids``, ``fu``: what
    ``edg extract imageed-features`` writes), or, with ``shards``, to a copy of those shards (folder ``out``)
    with ``fu.npy`` added to every sample whose molecule id has a feature: the input of ``edg pretrain teacher``."""
    raw, feats = read_ed_features(src)
    ids = map_ids(raw, id_format, strip_prefix)
    out = Path(out)
    if shards is None:
        if out.suffix != ".npz":
            raise EDGError(f"{out}: without --shards the output is an .npz file")
        _write_npz(out, ids=np.array(ids), fu=feats)
        return {"out": str(out), "molecules": len(ids), "fu_dim": int(feats.shape[1])}
    return {**_attach_to_shards(shards, out, dict(zip(ids, feats)), "fu"), "fu_dim": int(feats.shape[1])}


def rmd17_archive_ids(archive) -> list[str]:
    """Our ids (``rmd17:<molecule>:<MD17 index>``) of the rows of the rMD17 archive file ``rmd17_<molecule>.npz``
    (its ``old_indices``): the authors number rMD17 frames by archive row, we by MD17 trajectory index."""
    archive = Path(archive)
    name = archive.stem
    if not name.startswith("rmd17_"):
        raise EDGError(f"{archive}: expected the rMD17 archive file rmd17_<molecule>.npz")
    with np.load(archive, allow_pickle=False) as d:
        if "old_indices" not in d.files:
            raise EDGError(f"{archive}: no old_indices array (arrays {d.files}); not the rMD17 archive file")
        return [f"rmd17:{name[len('rmd17_'):]}:{int(i)}" for i in d["old_indices"]]


def import_teacher_features(src, out, id_format: str = "{}", strip_prefix: str = "", teacher=None,
                            rmd17_archive=None, row_ids: str | None = None) -> dict:
    """F_S from ``teacher_features.npz`` (``drug_id``, ``feats``) -> our teacher-target ``.npz`` (``ids``, ``fs``,
    and ``edp`` = EDP(F_S) when ``teacher`` (a teacher checkpoint, e.g. the imported one) is given), which
    ``edg distill --teacher-targets`` reads. Without ``drug_id`` their row order is the id (0, 1, ...).
    ``rmd17_archive``: their ids are rows of this ``rmd17_<molecule>.npz``; ours come from its ``old_indices``.
    ``row_ids``: an input spec (``edg_core.readers.open_source``) whose molecules, in order, name the rows (their
    Geom3D QM9 file has no ``drug_id``: row i is the i-th molecule of their QM9 in gdb order)."""
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise EDGError(f"teacher features {src} do not exist")
    d = safe_load_npz(src)
    if "feats" not in d:
        raise AssetFormatError(f"{src}: no 'feats' array (arrays {sorted(d)}); expected drug_id + feats")
    fs = np.asarray(d["feats"], dtype=np.float32)
    raw = d["drug_id"].tolist() if "drug_id" in d else list(range(len(fs)))
    if fs.ndim != 2 or len(raw) != fs.shape[0]:
        raise AssetFormatError(f"{src}: feats {fs.shape} and drug_id ({len(raw)}) do not pair up")
    if row_ids is not None:
        from edg.edg_core.readers import open_source
        ids = [m.id for m in open_source(row_ids).molecules()]
        if len(ids) != len(fs):
            raise EDGError(f"{src}: {len(fs)} rows, but {row_ids} gives {len(ids)} molecules")
    elif rmd17_archive is not None:
        rows = rmd17_archive_ids(rmd17_archive)
        try:
            ids = [rows[int(r)] for r in raw]
        except (IndexError, ValueError, TypeError):
            raise EDGError(f"{src}: drug_id values are not row numbers of {rmd17_archive} "
                           f"({len(rows)} rows; first ids {raw[:3]})") from None
    else:
        ids = map_ids(raw, id_format, strip_prefix)
    arrays = {"ids": np.array(ids), "fs": fs}
    if teacher is not None:
        from edg.train.io.model_files import load_ed_predictor
        edp = load_ed_predictor(teacher)
        if edp.dims[0] != fs.shape[1]:
            raise EDGError(f"{teacher}: its ED predictor takes {edp.dims[0]} features, {src} has {fs.shape[1]}")
        with torch.no_grad():
            arrays["edp"] = edp(torch.from_numpy(fs)).numpy()
    _write_npz(out, **arrays)
    return {"out": str(out), "molecules": len(ids), "fs_dim": int(fs.shape[1]), "edp": "edp" in arrays}


def _write_npz(out: Path, **arrays) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _attach_to_shards(spec, out, vectors: dict[str, np.ndarray], member: str) -> dict:
    """Copy the shards ``spec`` to folder ``out`` with ``<member>.npy`` added where the sample's molecule id is
    in ``vectors``. Resumable: keys already in finished output shards are skipped."""
    import json

    from edg.edg_core.io import progress
    from edg.edg_core.shards import ShardWriter, iter_shard, npy_bytes, shard_keys, shard_paths
    done = shard_keys(out) if Path(out).exists() else set()
    stats = {"out": str(out), "with_" + member: 0, "without": 0, "skipped_done": 0, "bad": 0}
    writer = ShardWriter(out, "shard", maxcount=1000)
    try:
        for path in progress(shard_paths(spec), f"attach {member}"):
            for raw in iter_shard(path):
                if raw["__key__"] in done:
                    stats["skipped_done"] += 1
                    continue
                if "__error__" in raw:
                    stats["bad"] += 1
                    log.warning("%s:%s: bad sample skipped: %s", path, raw["__key__"], raw["__error__"])
                    continue
                vec = vectors.get(json.loads(raw["meta.json"])["id"])
                sample = {k: v for k, v in raw.items() if k != f"{member}.npy"}
                if vec is not None:
                    sample[f"{member}.npy"] = npy_bytes(np.asarray(vec, dtype=np.float32))
                stats["with_" + member if vec is not None else "without"] += 1
                writer.write(sample)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return stats
