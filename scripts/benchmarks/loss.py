"""Benchmark section `loss`: MultiBoxLoss forward+backward vs the classic per-image algorithm.

What is timed: one forward and backward pass of the loss alone (no network) on leaf copies of
random loc [B, 8732, 4] and conf [B, 8732, 21] float32 predictions, for ``ssd.loss.MultiBoxLoss``
and for ``ssd.ops.reference.classic_multibox_loss`` (the classic SSD PyTorch port's algorithm), with
two kinds of random targets: 3-6 objects in every image, and skewed counts (most images 1-3
objects, a few 8-20, mean 3: a batch is padded to its largest count, which the batched loss
must not pay for). Both losses run in the same process, alternating within each round so that
load from other processes falls on both alike; after a warm-up round, the median of the rounds
counts, and the spread of the per-round ratios (each from two back-to-back timings) is shown.
On CUDA every timed call ends with ``torch.cuda.synchronize``. The target is the batched loss
at least 3x faster than the classic one at batch 32 on CPU.
"""

from __future__ import annotations

import functools
import statistics
from typing import Callable, Sequence

import torch

from benchmarks import interleaved_times
from ssd import defaults
from ssd.config import load_config
from ssd.loss import MultiBoxLoss
from ssd.modeling import resolve_priors
from ssd.ops.reference import classic_multibox_loss
from ssd.priors import priors_from_config

BATCH, NUM_CLASSES = 32, 21
MIN_OBJECTS, MAX_OBJECTS = 3, 6
# Object counts of the skewed scenario, repeated over the batch: mostly 1-3, a few 8-20 (mean 3).
SKEWED_COUNTS = (1, 1, 2, 2, 3, 1, 2, 4, 1, 3, 2, 1, 5, 2, 1, 3,
                 1, 2, 20, 1, 2, 3, 1, 8, 2, 1, 2, 1, 3, 1, 2, 12)
VARIANCES = defaults.VARIANCES
IOU_THRESHOLD, NEG_POS_RATIO = 0.5, 3
TARGET_RATIO = 3.0  # the batched loss must be at least this much faster than the classic one


def make_batch(priors: torch.Tensor, batch: int = BATCH, seed: int = 0,
               counts: Sequence[int] | None = None):
    """Random loc [B, P, 4], conf [B, P, C] and random objects for priors [P, 4]: counts[i]
    objects in image i (cycled over the batch), or 3-6 per image when counts is None."""
    generator = torch.Generator().manual_seed(seed)
    num_priors = priors.shape[0]
    loc = torch.randn(batch, num_priors, 4, generator=generator)
    conf = torch.randn(batch, num_priors, NUM_CLASSES, generator=generator)
    targets = []
    for image in range(batch):
        if counts is None:
            n = int(torch.randint(MIN_OBJECTS, MAX_OBJECTS + 1, (), generator=generator))
        else:
            n = counts[image % len(counts)]
        low = torch.rand(n, 2, generator=generator) * 0.65
        size = 0.05 + torch.rand(n, 2, generator=generator) * 0.3
        labels = torch.randint(0, NUM_CLASSES - 1, (n, 1), generator=generator).float()
        targets.append(torch.cat([low, low + size, labels], dim=1))  # [n, 5]
    return loc, conf, targets


def _forward_backward(loss_fn: Callable, loc, conf, priors, targets) -> Callable[[], dict]:
    """A step that runs `loss_fn` forward and backward on leaf copies of loc and conf."""
    loc_leaf = loc.clone().requires_grad_()
    conf_leaf = conf.clone().requires_grad_()

    def step() -> dict:
        loc_leaf.grad = conf_leaf.grad = None
        losses = loss_fn(loc_leaf, conf_leaf, priors, targets)
        (losses["loss_loc"] + losses["loss_conf"]).backward()
        return {name: value.detach() for name, value in losses.items()}

    return step


SCENARIOS = {"3-6 objects/image": None, "skewed counts (mean 3, max 20)": SKEWED_COUNTS}


def run(quick: bool = False, device: str = "cpu", batch_size: int = BATCH) -> dict:
    """Time both implementations on `device` at `batch_size` for each target scenario and
    print the figures; returns them per scenario."""
    device = torch.device(device)
    cfg = resolve_priors(load_config())  # SSD300: vgg16 at 300 px
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size).to(device)  # [8732, 4]
    repeats = 3 if quick else 30
    print(f"loss forward+backward, fp32, {device} ({torch.get_num_threads()} threads), batch "
          f"{batch_size}, {priors.shape[0]} priors, {NUM_CLASSES} classes (median of {repeats} "
          "alternating rounds)")
    return {name: _run_scenario(priors, counts, name, device, batch_size, repeats)
            for name, counts in SCENARIOS.items()}


def _run_scenario(priors: torch.Tensor, counts: Sequence[int] | None, name: str,
                  device: torch.device, batch_size: int, repeats: int) -> dict:
    """Figures of one target scenario (see `run`)."""
    loc, conf, targets = make_batch(priors.cpu(), batch_size, counts=counts)
    loc, conf, targets = loc.to(device), conf.to(device), [t.to(device) for t in targets]
    crit = MultiBoxLoss(num_classes=NUM_CLASSES, iou_threshold=IOU_THRESHOLD,
                        neg_pos_ratio=NEG_POS_RATIO, variances=VARIANCES)
    times, results = interleaved_times({
        "batched": _forward_backward(crit, loc, conf, priors, targets),
        "classic": _forward_backward(functools.partial(
            classic_multibox_loss, threshold=IOU_THRESHOLD, neg_pos_ratio=NEG_POS_RATIO),
            loc, conf, priors, targets),
    }, repeats, device)
    t_fast, t_base = statistics.median(times["batched"]), statistics.median(times["classic"])
    fast, base = results["batched"], results["classic"]
    agree = all(torch.allclose(fast[k].cpu(), base[k].cpu(), rtol=1e-5, atol=1e-6) for k in fast)
    ratio = t_base / t_fast
    round_ratios = sorted(b / f for f, b in zip(times["batched"], times["classic"]))
    quarter = len(round_ratios) // 4
    spread = (round_ratios[quarter], round_ratios[-1 - quarter])  # interquartile range
    print(f"  {name}")
    print(f"    MultiBoxLoss (batched)       {t_fast * 1000:8.1f} ms")
    print(f"    classic per-image algorithm  {t_base * 1000:8.1f} ms")
    print(f"    ratio                        {ratio:8.2f}x   (per-round ratios {spread[0]:.2f}-"
          f"{spread[1]:.2f} between the quartiles; same loss values: {agree}; target >= "
          f"{TARGET_RATIO:.0f}x: {'yes' if ratio >= TARGET_RATIO else 'NO'})")
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": "fp32",
        "batch": batch_size,
        "priors": int(priors.shape[0]),
        "classes": NUM_CLASSES,
        "objects_per_image": [len(t) for t in targets],
        "multibox_ms": round(t_fast * 1e3, 2),
        "classic_ms": round(t_base * 1e3, 2),
        "ratio": round(ratio, 2),
        "round_ratio_quartiles": [round(r, 2) for r in spread],
        "same_loss": agree,
    }
