"""Sections of scripts/benchmark.py: each module defines run(quick: bool) -> dict."""

from __future__ import annotations

import time
from typing import Callable

import torch


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
