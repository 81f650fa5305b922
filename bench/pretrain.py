"""Pretraining throughput: ImageED and teacher training steps (samples/s), and F_U / teacher-target
extraction (samples/s), for the tiny and the paper-size configs.

    python -m bench pretrain                    # tiny + paper sizes; batch 64 bf16 on GPU, small batch on CPU
    python -m bench pretrain --quick            # tiny configs only
    python -m bench pretrain --batch=8 --steps=5

Inputs are random images of the right shape (the step cost does not depend on the pixels); a step is
forward + backward + optimizer step as in ``train/loops/pretrain.py``. Each line states device, dtype and batch.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
from edg.train.loops.optim import adamw, sgd
from edg.train.models.imageed import ImageED, imageed_preset
from edg.train.models.teacher import TEACHER_PRESETS, Teacher, augment_structure_images, teacher_loss


def _timed(step, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench_imageed(preset: str, batch: int, steps: int, warmup: int, device, bf16: bool, compile_: bool) -> None:
    torch.manual_seed(0)
    model = ImageED(imageed_preset(preset)).to(device)
    cfg = model.cfg
    opt = adamw(model, 1e-4)
    imgs = torch.rand(batch, cfg.n_views, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    fwd = torch.compile(model) if compile_ else model
    ac = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train_step():
        with ac:
            loss = fwd(imgs)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def extract_step():
        with ac:
            model.features(imgs)
    dt = _timed(train_step, steps, warmup, device)
    tag = f"{device.type} {'bf16' if bf16 else 'fp32'} batch {batch}{' compiled' if compile_ else ''}"
    print(f"imageed {preset:8s} train   {batch / dt:9.2f} samples/s  ({dt * 1e3:8.1f} ms/step, "
          f"{cfg.num_visible}/{cfg.num_tokens} visible tokens; {tag})", flush=True)
    model.eval()
    dt = _timed(extract_step, steps, 1, device)
    print(f"imageed {preset:8s} F_U     {batch / dt:9.2f} samples/s  ({dt * 1e3:8.1f} ms/batch; {tag})", flush=True)


def bench_teacher(preset: str, batch: int, steps: int, warmup: int, device, bf16: bool) -> None:
    torch.manual_seed(0)
    mc = TEACHER_PRESETS[preset]
    model = Teacher(mc).to(device).to(memory_format=torch.channels_last)
    opt = sgd(model, 5e-3)
    stimg = torch.rand(batch, mc.n_views, 3, mc.img_size, mc.img_size, device=device)
    fu = torch.randn(batch, mc.fu_dim, device=device)
    has = torch.ones(batch, dtype=torch.bool, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    ac = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train_step():
        with ac:
            loss = teacher_loss(model(augment_structure_images(stimg, mc, g))[1], fu, has)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def export_step():
        with ac:
            model(stimg)
    tag = f"{device.type} {'bf16' if bf16 else 'fp32'} batch {batch}"
    dt = _timed(train_step, steps, warmup, device)
    print(f"teacher {preset:8s} train   {batch / dt:9.2f} samples/s  ({dt * 1e3:8.1f} ms/step, "
          f"{mc.n_views} views at {mc.img_size} px, p={mc.aug_p} augmentations; {tag})", flush=True)
    model.eval()
    dt = _timed(export_step, steps, 1, device)
    print(f"teacher {preset:8s} targets {batch / dt:9.2f} samples/s  ({dt * 1e3:8.1f} ms/batch; {tag})", flush=True)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench pretrain")
    ap.add_argument("--quick", action="store_true", help="tiny configs only")
    ap.add_argument("--batch", type=int, default=None, help="default: 64 on GPU; 16 tiny / 2 paper-size on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 GPU, 3 CPU)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd ImageED")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a, _ = ap.parse_known_args(argv)  # flags meant for other benchmarks (make bench) are ignored
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    steps = a.steps or (20 if gpu else 3)
    warmup = 3 if gpu else 1
    import os
    load = f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"device: {torch.cuda.get_device_name() if gpu else f'CPU, {torch.get_num_threads()} threads'}; "
          f"torch {torch.__version__}; {load}", flush=True)
    for preset in ["tiny"] + ([] if a.quick else ["vit_b16"]):
        batch = a.batch or (64 if gpu else (16 if preset == "tiny" else 2))
        bench_imageed(preset, batch, steps, warmup, device, bf16=gpu, compile_=False)
        if a.compile:
            bench_imageed(preset, batch, steps, warmup + 2, device, bf16=gpu, compile_=True)
    for preset in ["tiny"] + ([] if a.quick else ["resnet18"]):
        batch = a.batch or (64 if gpu else (16 if preset == "tiny" else 4))
        bench_teacher(preset, batch, steps, warmup, device, bf16=gpu)
