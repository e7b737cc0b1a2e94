"""Benchmark section `datacheck`: the prior coverage of `ssd-data check` on 16k boxes.

What is timed: `ssd.prior_coverage.prior_coverage` (every box's best prior IoU, and `match` on
every image for its positive priors) of 16,000 random boxes in 5,000 images (VOC07+12
trainval's size: about 16.5k images, 47k objects) against SSD300's 8732 priors, and as the
baseline the best IoU alone (`best_prior_iou`), on the CPU. The target is a few seconds.
"""

from __future__ import annotations

import torch

from benchmarks import best_time, random_targets
from ssd.config import load_config
from ssd.modeling import resolve_priors
from ssd.prior_coverage import best_prior_iou, prior_coverage
from ssd.priors import priors_from_config

NUM_BOXES = 16_000
OBJECTS_PER_IMAGE = 6  # at most; 3.5 on average
NUM_CLASSES = 21
IOU_THRESHOLD = 0.5


def _images(generator: torch.Generator) -> list[torch.Tensor]:
    """Boxes [n, 4] per image, NUM_BOXES in all."""
    images, total = [], 0
    while total < NUM_BOXES:
        target = random_targets(1, NUM_CLASSES, generator, OBJECTS_PER_IMAGE)[0][:NUM_BOXES - total, :4]
        images.append(target)
        total += len(target)
    return images


def run(quick: bool) -> dict:
    cfg = resolve_priors(load_config())  # SSD300: vgg16 at 300 px
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    images = _images(torch.Generator().manual_seed(0))
    flat = torch.cat(images)
    repeats = 1 if quick else 3
    coverage_s, _ = best_time(lambda: prior_coverage(images, priors, IOU_THRESHOLD), repeats)
    best_iou_s, _ = best_time(lambda: best_prior_iou(flat, priors), repeats)
    print(f"prior coverage of {len(flat)} boxes in {len(images)} images, {len(priors)} priors: "
          f"{coverage_s:.2f} s (best IoU alone {best_iou_s:.2f} s, "
          f"ratio {coverage_s / best_iou_s:.2f})")
    return {"boxes": len(flat), "images": len(images), "priors": len(priors),
            "coverage_s": coverage_s, "best_iou_s": best_iou_s}
