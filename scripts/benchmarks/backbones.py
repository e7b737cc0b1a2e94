"""`backbones` section: size, cost and CPU inference speed of each backbone, in one table.

Per backbone (its config file, at that config's image size): parameters, GFLOPs of one
forward pass of one image (counted by torch.utils.flop_counter.FlopCounterMode, which counts a
multiply-add as 2 FLOPs; convolutions and matrix products only), default boxes, and CPU
images/s of the forward pass at batch 8 in eval mode under no_grad: fp32 in the default
layout (the baseline), and the fast path: `ssd.precision.default_precision` for the CPU (bf16
autocast on CPUs with bf16 in hardware, else fp32) with channels_last. Each speed is the median
of a few timed runs after a warm-up run. Models are randomly initialised: speed does not depend
on the weights.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import CONFIGS
from ssd.config import load_config
from ssd.modeling import build_model
from ssd.precision import autocast_context, default_precision

BATCH = 8
BACKBONE_CONFIGS = {  # backbone -> its config (model.pretrained=null: no weight files needed)
    "vgg16": CONFIGS / "voc300.yaml",
    "ssd7": CONFIGS / "shapes.yaml",
    "mobilenet_v3_large": CONFIGS / "ssdlite320_mobilenet_v3.yaml",
    "resnet50": CONFIGS / "ssd300_resnet50.yaml",
}
GIGA = 1e9


def count_gflops(model: torch.nn.Module, image_size: int) -> float:
    """GFLOPs of `model` on one image [1, 3, S, S] (a multiply-add counts as 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / GIGA


def images_per_second(model: torch.nn.Module, images: torch.Tensor, precision: str, runs: int) -> float:
    """Median images/s of `runs` timed forward passes of `images` [B, 3, S, S] after a warm-up."""
    seconds = []
    with torch.no_grad(), autocast_context(images.device, precision):
        model(images)  # warm-up (allocations, oneDNN kernel choice)
        for _ in range(runs):
            start = time.perf_counter()
            model(images)
            seconds.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(seconds)


def measure(backbone: str, config: str, runs: int) -> dict:
    """The table row of one backbone: its figures at its config's image size."""
    cfg = load_config(config, overrides=["model.pretrained=null"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    size = cfg.model.image_size
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    row = {
        "backbone": backbone,
        "image_size": size,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": count_gflops(model, size),
        "priors": int(model.priors.shape[0]),
        "fp32_images_per_s": images_per_second(model, images, "fp32", runs),
    }
    precision = default_precision("cpu")
    model = model.to(memory_format=torch.channels_last)
    row["fast_images_per_s"] = images_per_second(
        model, images.contiguous(memory_format=torch.channels_last), precision, runs)
    row["fast_precision"] = precision
    return row


def run(quick: bool = False) -> dict:
    runs = 2 if quick else 5
    precision = default_precision("cpu")
    print(f"CPU forward, batch {BATCH}, {torch.get_num_threads()} threads, median of {runs} runs; "
          f"fast path = {precision} + channels_last; GFLOPs per image (multiply-add = 2 FLOPs)",
          flush=True)
    header = (f"{'backbone':<20s} {'size':>4s} {'params (M)':>10s} {'GFLOPs':>7s} {'priors':>6s} "
              f"{'fp32 img/s':>10s} {'fast img/s':>10s} {'speed-up':>8s}")
    print(header)
    rows = []
    for backbone, config in BACKBONE_CONFIGS.items():
        row = measure(backbone, config, runs)
        rows.append(row)
        print(f"{backbone:<20s} {row['image_size']:>4d} {row['params_m']:>10.2f} {row['gflops']:>7.2f} "
              f"{row['priors']:>6d} {row['fp32_images_per_s']:>10.1f} {row['fast_images_per_s']:>10.1f} "
              f"{row['fast_images_per_s'] / row['fp32_images_per_s']:>7.2f}x", flush=True)
    return {"batch": BATCH, "runs": runs, "fast_precision": precision, "rows": rows}
