"""Sections of scripts/benchmark.py: each module defines run(quick: bool) -> dict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ssd.modeling import build_model
from ssd.precision import autocast_context, prepare_for_inference, uses_channels_last

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG = CONFIGS / "shapes.yaml"  # the demo's config


def best_time(function: Callable[[], object], repeats: int, warmup: bool = True) -> tuple[float, object]:
    """Fastest wall-clock seconds of `repeats` calls (after one untimed call when `warmup`),
    and the value the last call returned."""
    if warmup:
        function()
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def synchronize(device: torch.device) -> None:
    """Wait for `device` to finish its queued work (CUDA runs asynchronously; CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(calls: dict[str, Callable[[], object]], repeats: int,
                      device: torch.device) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Seconds of each call in each of `repeats` rounds after one warm-up call, and each call's
    last result. The calls alternate within a round, so that load from other processes on a
    shared machine falls on all alike; each is timed between two synchronisations of `device`."""
    results = {name: call() for name, call in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            results[name] = call()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times, results


def median_times(calls: dict[str, Callable[[], object]], repeats: int,
                 device: torch.device) -> dict[str, float]:
    """Median seconds per call of `interleaved_times`."""
    times, _ = interleaved_times(calls, repeats, device)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def random_targets(batch: int, num_classes: int, generator: torch.Generator,
                   max_objects: int = 8) -> list[torch.Tensor]:
    """`batch` targets [n, 5] (normalised xyxy, 0-based label) with 1..max_objects boxes each."""
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
        low = torch.rand(n, 2, generator=generator) * 0.6
        size = 0.1 + torch.rand(n, 2, generator=generator) * 0.3
        labels = torch.randint(0, num_classes - 1, (n, 1), generator=generator).float()
        targets.append(torch.cat([low, low + size, labels], dim=1))  # [n, 5]
    return targets


def make_forward(cfg, device: torch.device, batch: int, precision: str,
                 compiled: bool = False) -> Callable[[], torch.Tensor]:
    """A closure running the inference forward pass of `cfg`'s model (random weights, seed 0)
    on a fixed random batch [batch, 3, size, size] in `precision`, channels_last where that
    precision runs it (as the predictor does); through torch.compile when `compiled`. Returns
    the closure, which returns the class scores [batch, priors, classes]."""
    torch.manual_seed(0)
    model = prepare_for_inference(build_model(cfg), device, precision)
    network = torch.compile(model) if compiled else model
    size = cfg.model.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    if uses_channels_last(precision):
        images = images.contiguous(memory_format=torch.channels_last)

    def forward() -> torch.Tensor:
        with torch.no_grad(), autocast_context(device, precision):
            return network(images)[1]

    return forward
