"""Elementary box maths every kernel builds on: format conversions, areas and the plain
pairwise IoU. Formats: "xyxy" = (xmin, ymin, xmax, ymax); "cxcywh" = (cx, cy, w, h).

A leaf of the package (it imports only torch), so the kernels of ``ssd.ops`` use it without
importing ``ssd.box_utils``, which imports them; ``ssd.box_utils`` re-exports these names,
their usual public home.
"""

from __future__ import annotations

import torch


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre form -> (..., 4) corner form."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) corner form -> (..., 4) centre form."""
    low, high = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(low + high) / 2, high - low], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area (zero for inverted boxes)."""
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return size[..., 0] * size[..., 1]


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: a (..., N, 4) xyxy, b (..., M, 4) xyxy -> (..., N, M).

    Leading dimensions broadcast, so a batch of padded ground truth [B, n, 4] against
    priors [P, 4] gives [B, n, P] in one call. Each coordinate is broadcast on its own, so
    every step works on contiguous (..., N, M) planes, in place where possible; the float
    operations are those of torchvision's NMS (inter / (area_a + area_b - inter)).
    """
    a_x1, a_y1, a_x2, a_y2 = (c[..., :, None] for c in boxes_a.unbind(dim=-1))  # (..., N, 1)
    b_x1, b_y1, b_x2, b_y2 = (c[..., None, :] for c in boxes_b.unbind(dim=-1))  # (..., 1, M)
    inter = (torch.minimum(a_x2, b_x2) - torch.maximum(a_x1, b_x1)).clamp_(min=0)  # (..., N, M)
    inter_h = (torch.minimum(a_y2, b_y2) - torch.maximum(a_y1, b_y1)).clamp_(min=0)
    inter.mul_(inter_h)
    union = box_area(boxes_a)[..., :, None] + box_area(boxes_b)[..., None, :] - inter
    return inter.div_(union.clamp_(min=torch.finfo(inter.dtype).tiny))

