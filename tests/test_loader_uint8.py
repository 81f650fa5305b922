"""uint8 end to end in the training loader (issue 24, part 1): the split filter before decoding, only the
members a model needs decoded, uint8 batches converted on the device; the model sees the same float tensors
as through the float32 path."""
from __future__ import annotations

import pytest
import torch
from edg.edg_core.shards import ShardWriter, decode_sample, encode_sample, iter_shard, shard_paths
from edg.train.data.shards import (
    ShardImages,
    collate,
    image_loader,
    images_to_float,
    in_validation,
    to_device,
    write_synthetic_shards,
)

VAL = 0.3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("u8_shards")
    write_synthetic_shards(out, size=16, maxcount=7, limit=20)  # 3 shards
    return out


def float32_path_batches(spec, kind: str, split: str, shuffle: int = 0, seed: int = 0, batch_size: int = 4):
    """Batches the model saw before: every member decoded to float32, split filter after, copied as they are."""
    ds = ShardImages(spec, kind, img_size=16, n_views=6 if kind == "imageed" else 4, split=split,
                     val_fraction=VAL, shuffle=shuffle, seed=seed, fu_dim=8, pixels="float32")
    return [{k: v.to("cpu") if isinstance(v, torch.Tensor) else v for k, v in b.items()}
            for b in image_loader(ds, batch_size)]


def uint8_path_batches(spec, kind: str, split: str, shuffle: int = 0, seed: int = 0, batch_size: int = 4):
    ds = ShardImages(spec, kind, img_size=16, n_views=6 if kind == "imageed" else 4, split=split,
                     val_fraction=VAL, shuffle=shuffle, seed=seed, fu_dim=8)
    raw = list(image_loader(ds, batch_size))
    member = "edimg" if kind == "imageed" else "stimg"
    assert all(b[member].dtype == torch.uint8 for b in raw)
    return [to_device(b, "cpu") for b in raw]


@pytest.mark.parametrize("kind", ["imageed", "teacher"])
@pytest.mark.parametrize("split,shuffle", [("train", 5), ("valid", 0), ("all", 0)])
def test_the_model_sees_the_same_float_tensors(shards, kind, split, shuffle):
    old = float32_path_batches(shards, kind, split, shuffle, seed=3)
    new = uint8_path_batches(shards, kind, split, shuffle, seed=3)
    assert len(old) == len(new) > 0
    for a, b in zip(old, new):
        assert a.keys() == b.keys() and a["key"] == b["key"]
        for k, v in a.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k


def test_images_to_float_is_the_float32_paths_division():
    import numpy as np
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    expected = torch.from_numpy(u8.numpy().astype(np.float32) / 255.0)
    assert torch.equal(images_to_float(u8), expected)
    assert images_to_float(expected) is expected  # floats pass through


def _rewrite(src, dst, damage):
    """Copy the samples of shards ``src`` into ``dst`` with ``damage(sample)`` applied to each raw sample."""
    with ShardWriter(dst, "damaged", maxcount=100) as w:
        for path in shard_paths(src):
            for s in iter_shard(path):
                w.write(damage({k: v for k, v in s.items() if k != "__url__"}))


def test_imageed_reader_decodes_no_structure_image(shards, tmp_path):
    """A corrupt ``stimg`` is never inflated by the ImageED reader (it needs ``edimg`` only); the float32 path,
    which decodes every member, loses those samples."""
    def corrupt_stimg(s):
        name = next(k for k in s if k.startswith("stimg."))
        s[name] = s[name][:16] + b"not zlib" * 8
        return s
    _rewrite(shards, tmp_path, corrupt_stimg)
    new = ShardImages(tmp_path, "imageed", img_size=16, n_views=6, split="all")
    assert len(list(new)) == 20 and new.bad == []
    old = ShardImages(tmp_path, "imageed", img_size=16, n_views=6, split="all", pixels="float32",
                      max_bad_samples=100)
    with pytest.raises(Exception, match="all 20 samples of this pass are bad"):
        list(old)


def test_split_filter_runs_before_decoding(shards, tmp_path):
    """A corrupt ``edimg`` in a validation sample costs the training reader nothing: its key is dropped before
    decoding. The validation reader still reports it (the sample checks are kept)."""
    damaged_keys = []

    def corrupt_validation_edimg(s):
        if in_validation(s["__key__"], VAL):
            name = next(k for k in s if k.startswith("edimg."))
            s[name] = s[name][:16] + b"garbage!" * 8
            damaged_keys.append(s["__key__"])
        return s
    _rewrite(shards, tmp_path, corrupt_validation_edimg)
    assert damaged_keys
    train = ShardImages(tmp_path, "imageed", img_size=16, n_views=6, split="train", val_fraction=VAL)
    assert len(list(train)) == 20 - len(damaged_keys) and train.bad == []
    valid = ShardImages(tmp_path, "imageed", img_size=16, n_views=6, split="valid", val_fraction=VAL,
                        max_bad_samples=100)
    with pytest.raises(Exception, match="samples of this pass are bad"):
        list(valid)
    assert len(valid.bad) == len(damaged_keys)


def test_decode_sample_members_and_uint8(shards):
    raw = next(iter_shard(shard_paths(shards)[0]))
    only = decode_sample(raw, members=("edimg",), uint8_images=True)
    assert only["edimg"].dtype == torch.uint8 and only["edimg"].shape == (6, 4, 16, 16)
    assert "stimg" not in only and "z" not in only and "pos" not in only
    full = decode_sample(raw)
    assert torch.equal(full["edimg"], images_to_float(only["edimg"]))
    bad = {**raw, "weird.bin": b"x"}  # unknown members are still refused when not decoded
    with pytest.raises(Exception, match="unknown member 'weird.bin'"):
        decode_sample(bad, members=("edimg",))
    no_meta = {k: v for k, v in raw.items() if k != "pos.npy"}  # the sample checks are kept
    with pytest.raises(Exception, match="lacks member"):
        decode_sample(no_meta, members=("edimg",))


def test_collate_stacks_uint8_without_converting():
    samples = [{"key": str(i), "edimg": torch.full((6, 4, 2, 2), i, dtype=torch.uint8)} for i in range(3)]
    batch = collate(samples)
    assert batch["edimg"].dtype == torch.uint8 and batch["edimg"].shape == (3, 6, 4, 2, 2)
    assert batch["edimg"][:, 0, 0, 0, 0].tolist() == [0, 1, 2] and batch["key"] == ["0", "1", "2"]


def test_teacher_samples_carry_fu_flags(tmp_path):
    import numpy as np
    from edg.edg_core.readers import open_source
    from edg.train.data.shards import synthetic_images
    with ShardWriter(tmp_path, "fu", maxcount=10) as w:
        for i, mol in enumerate(open_source("embedded:qm9").molecules()):
            if i == 4:
                break
            ed, st = synthetic_images(mol.z, mol.pos, 16)
            w.write(encode_sample(mol, edimg=ed, stimg=st, fu=np.full(8, i, np.float32) if i % 2 else None))
    new = [to_device(b, "cpu") for b in image_loader(
        ShardImages(tmp_path, "teacher", img_size=16, n_views=4, split="all", fu_dim=8), 4)]
    old = list(image_loader(ShardImages(tmp_path, "teacher", img_size=16, n_views=4, split="all", fu_dim=8,
                                        pixels="float32"), 4))
    assert new[0]["has_fu"].tolist() == [False, True, False, True]
    assert torch.equal(new[0]["fu"], old[0]["fu"]) and torch.equal(new[0]["stimg"], old[0]["stimg"])


def test_every_inflater_reads_u8z_the_same_and_refuses_damage():
    import numpy as np
    from edg.edg_core.shards import INFLATERS, decode_images_u8, encode_images, use_inflater
    assert "zlib-ng" in INFLATERS  # a dependency: the loader's rate rests on it
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 16, 16), dtype=np.uint8)
    blob = encode_images(images, "u8z")
    previous = use_inflater("zlib")
    try:
        for name in INFLATERS:
            use_inflater(name)
            assert np.array_equal(decode_images_u8(blob, "u8z"), images), name
            with pytest.raises(ValueError, match="does not inflate"):
                decode_images_u8(blob[:-20], "u8z")
    finally:
        use_inflater(previous)
