"""The speed benchmark's own bookkeeping (no timing is asserted: the figures live in
scripts/benchmark.py's output)."""

from __future__ import annotations

import torch
from conftest import load_script

from ssd.precision import default_precision


def test_postprocess_section_times_the_forward_pass_in_the_fast_precision():
    section = load_script("benchmarks/postprocess")
    seconds, precision = section.forward_seconds(1, torch.device("cpu"), repeats=1)
    assert seconds > 0 and precision == default_precision("cpu")


def test_loop_section_interleaves_segments_and_leaves_out_their_first_windows():
    section = load_script("benchmarks/loop")
    result = section.run(quick=True)
    segments, timed = 2, 2  # quick: 2 segments of 2 timed windows (and one untimed) each
    assert len(result["segment_ratios"]) == segments
    assert all(ratio > 0 for ratio in result["segment_ratios"])
    assert result["loop_images_per_s"] > 0 and result["bare_images_per_s"] > 0
    assert result["ratio"] == result["loop_images_per_s"] / result["bare_images_per_s"]
    assert min(result["segment_ratios"]) <= result["segment_median_ratio"] <= max(result["segment_ratios"])
    assert result["timed_loop_windows"] == segments * timed
