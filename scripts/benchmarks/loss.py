"""Benchmark section `loss`: MultiBoxLoss forward+backward vs a per-image loop baseline.

Batch 32, the 8732 SSD300 priors, 21 classes, 1-8 objects per image. The baseline below is
the straightforward implementation: for each image, match, encode, cross-entropy over every
prior, mine negatives by sorting, and sum. Both compute the same loss (checked here).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ssd.box_utils import cxcywh_to_xyxy, encode, pairwise_iou
from ssd.config import load_config
from ssd.loss import MultiBoxLoss
from ssd.priors import default_boxes

BATCH, NUM_CLASSES, MAX_OBJECTS = 32, 21, 8
VARIANCES = (0.1, 0.2)
TARGET_RATIO = 3.0  # issue 3: the batched loss at least 3x faster than the per-image loop


def _match_one(truths: torch.Tensor, priors: torch.Tensor, threshold: float):
    """One image: truths [n, 5] -> labels [P] (0 = background), matched boxes [P, 4]."""
    iou = pairwise_iou(truths[:, :4], cxcywh_to_xyxy(priors))  # [n, P]
    best_iou, best_truth = iou.max(dim=0)  # [P]
    best_prior = iou.argmax(dim=1)  # [n]
    for j in range(len(truths)):  # every object keeps its best prior
        best_truth[best_prior[j]] = j
        best_iou[best_prior[j]] = 2.0
    labels = truths[best_truth, 4].long() + 1  # [P]
    labels[best_iou < threshold] = 0
    return labels, truths[best_truth, :4]


def per_image_loss(
    loc: torch.Tensor,
    conf: torch.Tensor,
    priors: torch.Tensor,
    targets: Sequence[torch.Tensor],
    threshold: float = 0.5,
    neg_pos_ratio: int = 3,
) -> dict[str, torch.Tensor]:
    """The baseline: the MultiBoxLoss of loc [B, P, 4], conf [B, P, C], one image at a time."""
    loss_loc = loc.new_zeros(())
    loss_conf = conf.new_zeros(())
    num_pos_total = 0
    for i, truths in enumerate(targets):
        if len(truths) == 0:
            continue
        labels, boxes = _match_one(truths, priors, threshold)
        pos = labels > 0
        num_pos = int(pos.sum())
        loc_t = encode(boxes, priors, VARIANCES)  # [P, 4]
        loss_loc = loss_loc + F.smooth_l1_loss(loc[i][pos], loc_t[pos], reduction="sum")
        ce = F.cross_entropy(conf[i], labels, reduction="none")  # [P]
        mining = ce.detach().clone()
        mining[pos] = 0
        _, order = mining.sort(descending=True)
        _, rank = order.sort()
        num_neg = min(neg_pos_ratio * num_pos, len(pos) - num_pos)
        selected = pos | (~pos & (rank < num_neg))
        loss_conf = loss_conf + ce[selected].sum()
        num_pos_total += num_pos
    n = max(num_pos_total, 1)
    return {"loss_loc": loss_loc / n, "loss_conf": loss_conf / n}


def make_batch(priors: torch.Tensor, seed: int = 0):
    """Random predictions and 1-8 random objects per image for the given priors [P, 4]."""
    generator = torch.Generator().manual_seed(seed)
    num_priors = priors.shape[0]
    loc = torch.randn(BATCH, num_priors, 4, generator=generator)
    conf = torch.randn(BATCH, num_priors, NUM_CLASSES, generator=generator)
    targets = []
    for _ in range(BATCH):
        n = int(torch.randint(1, MAX_OBJECTS + 1, (), generator=generator))
        low = torch.rand(n, 2, generator=generator) * 0.65
        size = 0.05 + torch.rand(n, 2, generator=generator) * 0.3
        labels = torch.randint(0, NUM_CLASSES - 1, (n, 1), generator=generator).float()
        targets.append(torch.cat([low, low + size, labels], dim=1))  # [n, 5]
    return loc, conf, targets


def _time_interleaved(steps: dict[str, Callable[[], dict]], repeats: int) -> tuple[dict, dict]:
    """Median seconds per step over `repeats` rounds (after a warm-up round), and last results.

    The steps alternate within each round so that load from other processes on a shared
    machine falls on both alike.
    """
    results = {name: step() for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            results[name] = step()
            times[name].append(time.perf_counter() - start)
    medians = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    return medians, results


def _forward_backward(loss_fn: Callable, loc, conf, priors, targets) -> Callable[[], dict]:
    """A step that runs `loss_fn` forward and backward on leaf copies of loc and conf."""
    loc_leaf = loc.clone().requires_grad_()
    conf_leaf = conf.clone().requires_grad_()

    def step() -> dict:
        loc_leaf.grad = conf_leaf.grad = None
        losses = loss_fn(loc_leaf, conf_leaf, priors, targets)
        (losses["loss_loc"] + losses["loss_conf"]).backward()
        return {name: float(value.detach()) for name, value in losses.items()}

    return step


def run(quick: bool) -> dict:
    """Time both implementations and print the figures."""
    p = load_config().model.priors
    priors = default_boxes(p.feature_maps, 300, p.steps, p.min_sizes, p.max_sizes,
                           p.aspect_ratios, p.clip)  # [8732, 4]
    loc, conf, targets = make_batch(priors)
    repeats = 3 if quick else 15
    crit = MultiBoxLoss(num_classes=NUM_CLASSES, variances=VARIANCES)
    medians, results = _time_interleaved({
        "batched": _forward_backward(crit, loc, conf, priors, targets),
        "baseline": _forward_backward(per_image_loss, loc, conf, priors, targets),
    }, repeats)
    t_fast, t_base = medians["batched"], medians["baseline"]
    fast, base = results["batched"], results["baseline"]
    agree = all(abs(fast[k] - base[k]) <= 1e-4 * max(1.0, abs(base[k])) for k in fast)
    figures = {
        "batch": BATCH,
        "priors": int(priors.shape[0]),
        "classes": NUM_CLASSES,
        "multibox_s": round(t_fast, 5),
        "per_image_baseline_s": round(t_base, 5),
        "ratio": round(t_base / t_fast, 2),
        "same_loss": agree,
    }
    print(f"forward+backward, batch {BATCH}, {priors.shape[0]} priors, {NUM_CLASSES} classes, "
          f"1-{MAX_OBJECTS} objects/image (median of {repeats})")
    print(f"  MultiBoxLoss (batched)   {t_fast * 1000:8.1f} ms")
    print(f"  per-image loop baseline  {t_base * 1000:8.1f} ms")
    print(f"  ratio                    {t_base / t_fast:8.2f}x   (same loss values: {agree}; "
          f"target >= {TARGET_RATIO:.0f}x: {'yes' if t_base / t_fast >= TARGET_RATIO else 'NO'})")
    return figures
