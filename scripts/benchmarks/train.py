"""`train` section: SSD300 training step time at batch 8 on this machine's device.

Three modes timed in the same run: fp32 (the baseline), channels_last, and mixed precision
(bfloat16 autocast on CPU, float16 + GradScaler on CUDA). A step is forward + MultiBoxLoss +
backward + SGD update on random images with 1-8 random boxes each.
"""

from __future__ import annotations

import time

import torch

from benchmarks import CONFIGS, random_targets, synchronize
from ssd.config import load_config
from ssd.engine.solver import build_optimizer
from ssd.engine.trainer import train_step
from ssd.loss import build_loss
from ssd.modeling import build_model
from ssd.precision import cpu_has_native_bf16

BATCH = 8


def time_steps(mode: str, device: torch.device, steps: int) -> float:
    """Mean seconds per training step after one warm-up step."""
    cfg = load_config(CONFIGS / "voc300.yaml", overrides=["model.pretrained=null"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    channels_last = mode in ("channels_last", "amp")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_loss(cfg)
    optimizer = build_optimizer(model, 1e-3, 0.9, 5e-4)
    precision = ("fp16" if device.type == "cuda" else "bf16") if mode == "amp" else "fp32"
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 300, 300, generator=generator).to(device)
    targets = random_targets(BATCH, cfg.model.num_classes, generator)

    def step():
        train_step(model, criterion, optimizer, scaler, images, targets, precision, channels_last)

    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def run(quick: bool = False) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = 1 if quick else 3
    amp_name = "fp16 autocast" if device.type == "cuda" else "bf16 autocast"
    if device.type == "cpu":
        native = cpu_has_native_bf16()
        print(f"CPU bfloat16 in hardware (AVX-512 BF16 / AMX): {'yes' if native else 'no'}; the "
              f"trainer's train.amp {'uses bf16 autocast' if native else 'falls back to fp32'} here",
              flush=True)
    results = {}
    for mode, label in (("fp32", "fp32"), ("channels_last", "channels_last fp32"),
                        ("amp", f"{amp_name} + channels_last")):
        seconds = time_steps(mode, device, steps)
        results[mode] = seconds
        ratio = results["fp32"] / seconds
        print(f"SSD300 train step, batch {BATCH}, {device.type}, {label:<28s}: {seconds:6.2f} s/step "
              f"({BATCH / seconds:5.2f} images/s, {ratio:.2f}x fp32)", flush=True)
    return {"device": device.type, "batch": BATCH, "seconds_per_step": results,
            "speedup_vs_fp32": {k: results["fp32"] / v for k, v in results.items()}}
