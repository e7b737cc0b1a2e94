"""Sections of scripts/benchmark.py: each module defines run(quick: bool) -> dict."""

from __future__ import annotations

import time
from typing import Callable


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
