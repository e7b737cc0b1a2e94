"""`demo` section: the shapes demo's training step (configs/shapes.yaml model, its batch size).

Times forward + MultiBoxLoss + backward + optimizer step on random images with 1-6 random boxes:
fp32 in NCHW (the baseline), fp32 channels_last, and the precision the trainer picks here for
`train.amp: true` (bf16 autocast only on CPUs with bf16 in hardware). Prints the projected
training time of the demo's `solver.max_iter` iterations (data loading and evaluation excluded).
"""

from __future__ import annotations

import torch

from benchmarks import DEMO_CONFIG, best_time, random_targets, synchronize
from ssd.config import load_config
from ssd.engine.solver import build_optimizer
from ssd.engine.trainer import train_step
from ssd.loss import build_loss
from ssd.modeling import build_model
from ssd.precision import training_precision


def make_step(cfg, device: torch.device, channels_last: bool, precision: str,
              compiled: bool = False):
    """A closure running one training step of `cfg`'s model on a fixed random batch
    [solver.batch_size, 3, size, size]; the model runs through torch.compile when `compiled`
    (as `train.compile: true` does)."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    size, batch = cfg.model.image_size, cfg.solver.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    targets = random_targets(batch, cfg.model.num_classes, generator, max_objects=6)
    criterion = build_loss(cfg)
    optimizer = build_optimizer(model, cfg.solver.lr, cfg.solver.momentum, cfg.solver.weight_decay,
                                name=cfg.solver.optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    network = torch.compile(model) if compiled else model

    def step():
        train_step(network, criterion, optimizer, scaler, images, targets, precision, channels_last,
                   cfg.solver.clip_grad_norm)
        synchronize(device)

    return step


def run(quick: bool = False) -> dict:
    cfg = load_config(DEMO_CONFIG)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = training_precision(cfg.train.amp, device)
    modes = {
        "fp32": (False, "fp32"),
        "channels_last": (True, "fp32"),
        "as_configured": (bool(cfg.train.channels_last), precision),
    }
    repeats = 2 if quick else 5
    seconds = {}
    for name, (channels_last, mode_precision) in modes.items():
        seconds[name], _ = best_time(make_step(cfg, device, channels_last, mode_precision), repeats)
    batch, max_iter = cfg.solver.batch_size, cfg.solver.max_iter
    labels = {"fp32": "fp32 NCHW (baseline)", "channels_last": "fp32 channels_last",
              "as_configured": f"as configured ({precision}"
                               f"{', channels_last' if cfg.train.channels_last else ''})"}
    print(f"{DEMO_CONFIG.name}: {cfg.model.backbone} {cfg.model.image_size} px, batch {batch}, {device.type}")
    for name, value in seconds.items():
        print(f"  {labels[name]:<36s}: {value:6.3f} s/step ({batch / value:6.1f} images/s, "
              f"{seconds['fp32'] / value:.2f}x baseline)", flush=True)
    minutes = seconds["as_configured"] * max_iter / 60
    print(f"  projected compute for {max_iter} iterations: {minutes:.1f} min (no data loading or eval)")
    return {"device": device.type, "batch": batch, "seconds_per_step": seconds,
            "speedup_vs_fp32": {k: seconds["fp32"] / v for k, v in seconds.items()},
            "projected_minutes": minutes}
