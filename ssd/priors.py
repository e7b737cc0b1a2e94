"""Default (prior) boxes of SSD: a pure function of the prior settings."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def boxes_per_location(aspect_ratios: Sequence[float]) -> int:
    """Number of default boxes at one feature-map cell: 2 squares + 2 per aspect ratio."""
    return 2 + 2 * len(aspect_ratios)


def default_boxes(
    feature_maps: Sequence[int],
    image_size: int,
    steps: Sequence[float],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    clip: bool = True,
) -> torch.Tensor:
    """The SSD default boxes for all feature maps.

    Args:
        feature_maps: side length (cells) of each square feature map, e.g. 38, 19, ... 1.
        image_size: side of the square network input in pixels.
        steps: pixel stride of each feature map (cell centre k is at (k + 0.5) * step).
        min_sizes, max_sizes: box sides in pixels per feature map; the second square box
            has side sqrt(min * max).
        aspect_ratios: per feature map, the ratios ar giving the box pairs
            (s*sqrt(ar), s/sqrt(ar)) and (s/sqrt(ar), s*sqrt(ar)) with s = min size.
        clip: clamp every coordinate to [0, 1].

    Returns:
        Tensor[P, 4] of (cx, cy, w, h) normalised by `image_size`, ordered by feature map,
        row, column, then [min, sqrt(min*max), ar pairs in the order given].
    """
    per_map = []
    for size, step, min_size, max_size, ratios in zip(
        feature_maps, steps, min_sizes, max_sizes, aspect_ratios
    ):
        centres = (torch.arange(size, dtype=torch.float64) + 0.5) * step / image_size
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # (size, size) each
        shapes = _box_shapes(min_size / image_size, max_size / image_size, ratios)  # (A, 2)
        num_shapes = shapes.shape[0]
        centre_xy = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # (HW, 1, 2)
        centre_xy = centre_xy.expand(-1, num_shapes, 2)  # (HW, A, 2)
        wh = shapes.unsqueeze(0).expand(centre_xy.shape[0], -1, -1)  # (HW, A, 2)
        per_map.append(torch.cat([centre_xy, wh], dim=-1).reshape(-1, 4))  # (HW*A, 4)
    priors = torch.cat(per_map, dim=0).float()
    return priors.clamp_(0.0, 1.0) if clip else priors


def _box_shapes(min_side: float, max_side: float, ratios: Sequence[float]) -> torch.Tensor:
    """(w, h) of the default boxes at one cell: Tensor[2 + 2*len(ratios), 2]."""
    shapes = [(min_side, min_side)]
    big = math.sqrt(min_side * max_side)
    shapes.append((big, big))
    for ratio in ratios:
        root = math.sqrt(ratio)
        shapes.append((min_side * root, min_side / root))
        shapes.append((min_side / root, min_side * root))
    return torch.tensor(shapes, dtype=torch.float64)


def priors_from_config(prior_cfg, image_size: int) -> torch.Tensor:
    """`default_boxes` with the arguments of a `model.priors` config section."""
    return default_boxes(
        feature_maps=prior_cfg.feature_maps,
        image_size=image_size,
        steps=prior_cfg.steps,
        min_sizes=prior_cfg.min_sizes,
        max_sizes=prior_cfg.max_sizes,
        aspect_ratios=prior_cfg.aspect_ratios,
        clip=prior_cfg.clip,
    )
