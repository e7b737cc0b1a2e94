"""IoU of boxes with every prior, computed over the priors' distinct intervals.

Equals the plain ``ssd.ops.boxes.pairwise_iou(boxes, priors_xyxy)`` bit for bit: the same
float32 operations (min/max, clamp, product, area_a + area_b - inter, division), only each
axis' overlap is computed once per distinct prior interval and then spread to all priors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ssd.ops.boxes import box_area, cxcywh_to_xyxy


class PriorIntervals(NamedTuple):
    """The distinct x and y intervals of a set of priors [P, 4] xyxy (see `prior_iou`).

    x_low, x_high: [U] distinct (xmin, xmax) pairs; x_index: [P], prior p has pair
    x_index[p]; the same for y; area: [P] prior areas.
    """

    x_low: torch.Tensor
    x_high: torch.Tensor
    x_index: torch.Tensor
    y_low: torch.Tensor
    y_high: torch.Tensor
    y_index: torch.Tensor
    area: torch.Tensor


class PriorGeometry(NamedTuple):
    """What matching needs of priors [P, 4] (cx, cy, w, h): corners [P, 4] xyxy and their
    PriorIntervals. Computed once by whoever holds the priors (see `prior_geometry`)."""

    corners: torch.Tensor
    intervals: PriorIntervals


def prior_geometry(priors_cxcywh: torch.Tensor) -> PriorGeometry:
    """Corners and distinct intervals of priors [P, 4] (cx, cy, w, h) (sorts P twice)."""
    corners = cxcywh_to_xyxy(priors_cxcywh)
    return PriorGeometry(corners, prior_intervals(corners))


def prior_intervals(priors_xyxy: torch.Tensor) -> PriorIntervals:
    """[P, 4] xyxy priors -> their PriorIntervals."""
    return PriorIntervals(*_distinct_intervals(priors_xyxy[:, 0], priors_xyxy[:, 2]),
                          *_distinct_intervals(priors_xyxy[:, 1], priors_xyxy[:, 3]),
                          box_area(priors_xyxy))


def prior_iou(boxes: torch.Tensor, priors_xyxy: torch.Tensor,
              intervals: PriorIntervals | None = None) -> torch.Tensor:
    """`pairwise_iou` (bit for bit) of boxes (..., N, 4) xyxy against priors [P, 4] xyxy.

    Priors lie on grids, so the P priors have only a few hundred distinct x intervals and y
    intervals (333 of each for SSD300's 8732). The overlap along each axis is computed for
    those alone and then spread to all priors, which saves most of the full-size passes.
    `intervals` (from `prior_intervals(priors_xyxy)`) may be passed to reuse them.

    Returns:
        (..., N, P) IoU.
    """
    p = prior_intervals(priors_xyxy) if intervals is None else intervals
    spread_shape = (*boxes.shape[:-1], len(p.area))  # (..., N, P)
    # gather with an expanded index: about 2.5x faster than index_select on the last dim.
    inter = _overlap_length(boxes[..., 0], boxes[..., 2], p.x_low, p.x_high).gather(
        -1, p.x_index.expand(spread_shape))
    inter.mul_(_overlap_length(boxes[..., 1], boxes[..., 3], p.y_low, p.y_high).gather(
        -1, p.y_index.expand(spread_shape)))
    union = box_area(boxes)[..., :, None] + p.area  # (..., N, P)
    return inter.div_(union.sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny))


def _distinct_intervals(low: torch.Tensor, high: torch.Tensor):
    """Distinct (low, high) pairs of [P] coordinates: lows [U], highs [U] and index [P]
    with pair p == (lows[index[p]], highs[index[p]]). Pairs are told apart by their bits."""
    bits = 32
    key = low.view(torch.int32).long() << bits | (high.view(torch.int32).long() & (1 << bits) - 1)
    distinct, index = torch.unique(key, return_inverse=True)  # [U], [P]
    first = torch.empty_like(distinct).scatter_(0, index, torch.arange(len(index), device=low.device))
    return low[first], high[first], index


def _overlap_length(low_a: torch.Tensor, high_a: torch.Tensor, low_b: torch.Tensor,
                    high_b: torch.Tensor) -> torch.Tensor:
    """Overlap (>= 0) of intervals a (..., N) with intervals b [U] -> (..., N, U)."""
    return (torch.minimum(high_a[..., None], high_b) - torch.maximum(low_a[..., None], low_b)).clamp_(min=0)
