"""`edg pretrain` / `edg extract` end to end on synthetic shards (tiny presets, CPU)."""
import re

import numpy as np
import pytest
import yaml
from edg.cluster.cli import main
from edg.edg_core.shards import read_samples
from edg.train.data.shards import write_synthetic_shards


def test_help_lists_the_stages(capsys):
    for argv in (["pretrain", "--help"], ["pretrain", "imageed", "--help"], ["extract", "teacher-targets", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--model.view-embedding" in out and "--ray-workers" in out and "EDP(F_S)" in out


def test_pipeline_from_images_to_teacher_targets(tmp_path, capsys):
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, size=32, maxcount=8, limit=16)
    common = ["--preset", "tiny", "--num-workers", "0", "--batch-size", "8"]
    assert main(["pretrain", "imageed", "--shards", str(shards), "--out", str(tmp_path / "imageed"), "--epochs", "1",
                 "--warmup-epochs", "0", "--no-model.view-embedding", "--model.mask-ratio", "0.5", *common]) == 0
    cfg = yaml.safe_load((tmp_path / "imageed" / "config.yaml").read_text())
    assert cfg["model"]["view_embedding"] is False and cfg["model"]["mask_ratio"] == 0.5
    assert cfg["model"]["embed_dim"] == 64 and cfg["epochs"] == 1
    assert main(["extract", "imageed-features", "--model", str(tmp_path / "imageed"), "--shards", str(shards),
                 "--out", str(tmp_path / "fu")]) == 0
    assert main(["pretrain", "teacher", "--shards", str(tmp_path / "fu"), "--out", str(tmp_path / "teacher"),
                 "--epochs", "1", *common]) == 0
    assert main(["extract", "teacher-targets", "--teacher", str(tmp_path / "teacher" / "teacher.pt"),
                 "--shards", str(tmp_path / "fu"), "--out", str(tmp_path / "targets.npz")]) == 0
    z = np.load(tmp_path / "targets.npz")
    assert z["fs"].shape == (16, 512) and z["edp"].shape == (16, 64) and z["ids"][0] == "qm9:1"
    fu = {d["meta"]["id"]: d["fu"] for d in read_samples(tmp_path / "fu")}
    assert len(fu) == 16 and fu["qm9:1"].shape == (64,)
    assert main(["pretrain", "figure", "--model", str(tmp_path / "imageed" / "imageed.pt"), "--shards", str(shards),
                 "--out", str(tmp_path / "fig.png"), "--molecules", "1"]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["pretrain", "imageed", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--preset", "tiny", "--num-workers", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_synthetic_shards(tmp_path / "s", size=32, limit=2)
    # images rendered at 32 px, model set to 64 px: refused at start-up, naming the sample and the flag
    assert main(["pretrain", "imageed", "--shards", str(tmp_path / "s"), "--out", str(tmp_path / "o"),
                 "--preset", "tiny", "--model.img-size", "64", "--num-workers", "0", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"synthetic-000000\.tar:qm9:[12]\): 32 px images, the model takes 64 px: set "
                     r"--model.img-size 32", err), err
    assert not (tmp_path / "o").exists()  # nothing written


def test_model_shapes_are_read_from_the_shards(tmp_path, capsys):
    """--preset tiny (32 px) on 64 px images adapts and keeps its 4 x 4 patch grid; a teacher whose F_U width
    was set by hand and disagrees with the shards is refused at start-up with the flag to set."""
    from edg.train.io.model_files import load_imageed
    from edg.train.models.imageed import ImageED, imageed_preset
    write_synthetic_shards(tmp_path / "s", size=64, limit=8)
    common = ["--preset", "tiny", "--num-workers", "0", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0"]
    assert main(["pretrain", "imageed", "--shards", str(tmp_path / "s"), "--out", str(tmp_path / "i"), *common]) == 0
    out = capsys.readouterr().out
    assert "model.img_size 32 -> 64" in out and "model.patch_size 8 -> 16" in out
    assert "train loss" in out and "(normalised-pixel MSE)" in out  # the closing line has units
    model = load_imageed(tmp_path / "i")
    assert (model.cfg.img_size, model.cfg.patch_size, model.cfg.grid_size) == (64, 16, 4)

    from edg.cluster.stages import run_extract
    run_extract("imageed", ImageED(imageed_preset("tiny", img_size=64, patch_size=16, embed_dim=48)),
                tmp_path / "s", tmp_path / "fu")  # F_U 48 wide
    t = ["pretrain", "teacher", "--shards", str(tmp_path / "fu"), *common]
    assert main([*t, "--out", str(tmp_path / "t1"), "--model.fu-dim", "64"]) == 2
    err = capsys.readouterr().err
    assert "F_U of width 48" in err and "set --model.fu-dim 48" in err and not (tmp_path / "t1").exists()
    assert main([*t, "--out", str(tmp_path / "t2")]) == 0  # not set by hand: taken from the shards
    out = capsys.readouterr().out
    assert "model.fu_dim 64 -> 48" in out and "model.img_size 32 -> 64" in out


def test_config_layers_preset_yaml_flags(tmp_path):
    import argparse

    from edg.cluster.commands.pretrain import resolve_config
    (tmp_path / "c.yaml").write_text("imageed:\n  epochs: 7\n  betas: [0.8, 0.9]\n  model:\n    depth: 3\n")
    args = argparse.ArgumentParser()
    sub = args.add_subparsers()
    from edg.cluster.commands import pretrain as cmd
    cmd.register(sub)
    ns = args.parse_args(["pretrain", "imageed", "--shards", "s", "--out", "o", "--preset", "tiny",
                          "--config", str(tmp_path / "c.yaml"), "--config-section", "imageed", "--blr", "1e-3"])
    cfg = resolve_config(ns)
    assert (cfg.epochs, cfg.betas, cfg.blr) == (7, (0.8, 0.9), 1e-3)
    assert (cfg.model.depth, cfg.model.embed_dim, cfg.model.img_size) == (3, 64, 32)  # yaml over the tiny preset
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    ns.config, ns.config_section = str(tmp_path / "bad.yaml"), None
    with pytest.raises(Exception, match=r"bad.yaml: unknown key\(s\) \['epoch'\]"):
        resolve_config(ns)


def test_pretrain_to_an_fsspec_url_resumes_from_it(tmp_path, monkeypatch):
    """--out memory://...: the run folder reaches the URL; a rerun with an empty working copy ($EDG_CACHE)
    pulls the finished checkpoint and trains no further epoch."""
    import uuid

    import fsspec
    monkeypatch.setenv("EDG_ALLOW_MEMORY_OUT", "1")  # memory:// --out is refused outside in-process tests
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, size=32, maxcount=8, limit=8)
    url = f"memory:///edg-pretrain-{uuid.uuid4().hex[:8]}"
    argv = ["pretrain", "imageed", "--shards", str(shards), "--out", url, "--epochs", "1", "--warmup-epochs", "0",
            "--preset", "tiny", "--num-workers", "0", "--batch-size", "8"]
    fs, root = fsspec.core.url_to_fs(url)
    try:
        monkeypatch.setenv("EDG_CACHE", str(tmp_path / "cache1"))
        assert main(argv) == 0
        assert {p.rsplit("/", 1)[-1] for p in fs.find(root)} >= {"imageed.pt", "epoch-000001.pt", "config.yaml",
                                                                  "metrics.jsonl"}
        def stamps():  # config.yaml is rewritten by every run; the rest only by training
            return {p: i["created"] for p, i in fs.find(root, detail=True).items() if not p.endswith("config.yaml")}
        before = stamps()
        monkeypatch.setenv("EDG_CACHE", str(tmp_path / "cache2"))  # another machine: nothing local
        assert main(argv) == 0
        assert (tmp_path / "cache2" / "staging").is_dir()
        # nothing was trained or uploaded again: every file at the URL is the one the first run wrote
        names = {p.rsplit("/", 1)[-1] for p in before}
        events = {n for n in names if n.startswith("events.out.tfevents.")}  # TensorBoard's, one per training run
        assert stamps() == before and len(events) == 1 and names - events == {
            "imageed.pt", "epoch-000001.pt", "metrics.jsonl", "metrics.csv", "progress.json", "edg-run.json"}
        assert len(fs.cat(f"{root}/metrics.jsonl").decode().splitlines()) == 1
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)
