"""`compile` section: torch.compile against eager execution, for training and for inference.

For the model of --config (default the demo's, configs/shapes.yaml; configs/shapes300.yaml is
SSD300) on --device, at --batch-size (default the config's solver.batch_size), in the same run:

- the full training step (forward + MultiBoxLoss + backward + optimizer step) on a fixed random
  batch, in the precision the trainer picks for the config's `train.amp`, channels_last as the
  config says: eager against the model compiled as `train.compile: true` compiles it;
- the inference forward pass in the device's fast precision (`default_precision`), channels_last
  where that precision runs it: eager against the model compiled as `Predictor(compile=True)`
  and `scripts/eval.py --compile` compile it.

What is timed: the compile time is the wall time of the first compiled call (tracing,
compiling and running once; inductor's on-disk cache makes a second process faster); then the
median of interleaved eager and compiled calls after a warm-up, each between synchronisations
of the device. On CUDA cuDNN's autotuning is on for both, as the trainer and predictor set it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks import DEMO_CONFIG, make_forward, median_times, synchronize
from benchmarks.demo import make_step
from ssd.config import load_config
from ssd.precision import default_precision, enable_cudnn_autotune, precision_label, training_precision


def _first_call_seconds(call, device: torch.device) -> float:
    """Wall seconds of one call of `call`, the device synchronised at both ends."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def _compare(eager, compiled, device: torch.device, repeats: int) -> dict:
    """{"compile_s", "eager_ms", "compiled_ms", "speedup"} of two closures doing the same work."""
    compile_seconds = _first_call_seconds(compiled, device)
    medians = median_times({"eager": eager, "compiled": compiled}, repeats, device)
    return {"compile_s": round(compile_seconds, 1), "eager_ms": round(1e3 * medians["eager"], 2),
            "compiled_ms": round(1e3 * medians["compiled"], 2),
            "speedup": round(medians["eager"] / medians["compiled"], 3)}


def run(quick: bool = False, device: str = "cpu", batch_size: int | None = None,
        config: Path = DEMO_CONFIG, overrides: list[str] | None = None) -> dict:
    """Print and return {"train_step": {...}, "forward": {...}} (see `_compare`), with the
    device, batch and precisions."""
    device = torch.device(device)
    own = ["model.pretrained=null"] + ([f"solver.batch_size={batch_size}"] if batch_size else [])
    cfg = load_config(config, overrides=own + list(overrides or []))
    batch = cfg.solver.batch_size
    enable_cudnn_autotune(device)
    repeats = 3 if quick else 10
    train_precision = training_precision(cfg.train.amp, device)
    channels_last = bool(cfg.train.channels_last)
    steps = [make_step(cfg, device, channels_last, train_precision, compiled=flag) for flag in (False, True)]
    result = {"device": str(device), "batch": batch, "train_precision": train_precision,
              "train_step": _compare(*steps, device, repeats)}
    del steps
    inference_precision = default_precision(device)
    forwards = [make_forward(cfg, device, batch, inference_precision, compiled=flag)
                for flag in (False, True)]
    result["inference_precision"] = inference_precision
    result["forward"] = _compare(*forwards, device, repeats)
    print(f"torch.compile, {Path(config).name}: {cfg.model.backbone} {cfg.model.image_size} px, "
          f"batch {batch}, {device}; medians of {repeats} after the compile and a warm-up")
    labels = {"train_step": f"train step ({precision_label(train_precision)}"
                            f"{', channels_last' if channels_last else ''})",
              "forward": f"forward ({precision_label(inference_precision)})"}
    for name, label in labels.items():
        figures = result[name]
        print(f"  {label:<44s} eager {figures['eager_ms']:8.2f} ms, compiled {figures['compiled_ms']:8.2f} "
              f"ms ({figures['speedup']:.2f}x); compiling took {figures['compile_s']:.1f} s")
    return result
