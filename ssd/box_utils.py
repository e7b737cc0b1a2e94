"""Pure box maths. Formats: "xyxy" = (xmin, ymin, xmax, ymax); "cxcywh" = (cx, cy, w, h).

All functions take and return tensors whose last dimension is 4 and work on any leading
batch shape unless the docstring says otherwise. The elementary conversions, `box_area` and
`pairwise_iou` are defined in the leaf module `ssd.ops.boxes` (the kernels use them from there)
and are re-exported here.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from ssd import defaults
from ssd.ops.bipartite import bipartite_claims, first_row_reaching
from ssd.ops.boxes import box_area, cxcywh_to_xyxy, pairwise_iou, xyxy_to_cxcywh
from ssd.ops.chunked_match import match_in_chunks
from ssd.ops.prior_iou import PriorGeometry, prior_geometry, prior_iou

# The largest size offset `decode` exponentiates (after the variance): a box grows to at most
# 1000/16 times its prior, as torchvision's bbox_xform_clip. A diverged offset would overflow
# exp to boxes of (-inf, -inf, inf, inf), whose IoU is NaN, so NMS would never suppress them.
MAX_SIZE_OFFSET = math.log(1000.0 / 16)

__all__ = [
    "MAX_SIZE_OFFSET", "box_area", "cxcywh_to_xyxy", "decode", "encode", "match", "pad_targets",
    "pairwise_iou", "xyxy_to_cxcywh",
]


def encode(
    matched_xyxy: torch.Tensor, priors_cxcywh: torch.Tensor, variances: Sequence[float]
) -> torch.Tensor:
    """Regression targets of boxes relative to their priors (the SSD parametrisation).

    Args:
        matched_xyxy: (..., P, 4) ground-truth boxes in corner form, one per prior.
        priors_cxcywh: (P, 4) default boxes in centre form.
        variances: (centre variance, size variance), e.g. (0.1, 0.2).

    Returns:
        (..., P, 4) offsets (dcx, dcy, dw, dh).
    """
    centre_var, size_var = variances
    gt = xyxy_to_cxcywh(matched_xyxy)
    d_centre = (gt[..., :2] - priors_cxcywh[:, :2]) / (centre_var * priors_cxcywh[:, 2:])
    # Degenerate (zero-size) targets only occur for background priors whose offsets are unused.
    ratio = (gt[..., 2:] / priors_cxcywh[:, 2:]).clamp(min=1e-8)
    d_size = torch.log(ratio) / size_var
    return torch.cat([d_centre, d_size], dim=-1)


def decode(
    offsets: torch.Tensor, priors_cxcywh: torch.Tensor, variances: Sequence[float]
) -> torch.Tensor:
    """Inverse of `encode`: (..., P, 4) offsets + (P, 4) priors -> (..., P, 4) xyxy boxes.

    The size offsets times the size variance are clamped at MAX_SIZE_OFFSET, so every box is
    finite (ordinary offsets are unchanged bit for bit).
    """
    centre_var, size_var = variances
    centre = priors_cxcywh[:, :2] + offsets[..., :2] * centre_var * priors_cxcywh[:, 2:]
    size = priors_cxcywh[:, 2:] * torch.exp((offsets[..., 2:] * size_var).clamp(max=MAX_SIZE_OFFSET))
    return cxcywh_to_xyxy(torch.cat([centre, size], dim=-1))


def pad_targets(targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image targets of different lengths.

    Args:
        targets: B tensors [n_i, 5] = (xmin, ymin, xmax, ymax, label).

    Returns:
        boxes [B, n_max, 5] zero-padded, valid [B, n_max] bool. n_max is at least 1 so
        downstream shapes stay non-empty.
    """
    counts = [len(t) for t in targets]
    n_max = max([1] + counts)
    device = targets[0].device if len(targets) else torch.device("cpu")
    dtype = targets[0].dtype if len(targets) else torch.float32
    padded = torch.zeros(len(targets), n_max, 5, device=device, dtype=dtype)
    valid = torch.zeros(len(targets), n_max, dtype=torch.bool, device=device)
    total = sum(counts)
    if total:  # all rows in one copy: row r of image i goes to padded[i, r]
        per_image = torch.tensor(counts, device=device)  # [B]
        image = torch.repeat_interleave(torch.arange(len(counts), device=device), per_image,
                                        output_size=total)  # [N]
        first_row = per_image.cumsum(0) - per_image  # [B]: where each image's rows start
        row = torch.arange(len(image), device=device) - first_row[image]  # [N]
        padded[image, row] = torch.cat(list(targets))  # [N, 5]
        valid[image, row] = True
    return padded, valid


def match(
    gt_boxes: torch.Tensor,
    gt_valid: torch.Tensor,
    priors: torch.Tensor | PriorGeometry,
    iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
    chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign every prior of every image to a ground truth box, for a whole batch at once.

    Each prior takes its highest-IoU ground truth (the first of equal ones); below
    `iou_threshold` it is background. Every ground truth then claims its own best prior even
    below the threshold (the bipartite step of the paper); when two ground truths share a
    best prior the later one wins, as in the classic implementation.

    Args:
        gt_boxes: [B, n, 4] xyxy normalised ground truth, padded (see `pad_targets`).
        gt_valid: [B, n] bool, False for padding.
        priors: [P, 4] default boxes (cx, cy, w, h), or their `PriorGeometry` (from
            `ssd.ops.prior_iou.prior_geometry`) when the caller keeps it between calls.
        iou_threshold: minimum IoU for a positive prior.
        chunk_elements: None matches the whole batch at once; otherwise images are matched
            in chunks of about this many IoU entries (see `ssd.ops.chunked_match`), which
            keeps a CPU's temporaries in cache. The results do not depend on it.

    Returns:
        matched_index [B, P] long: index into n of each positive prior's ground truth (0 for
            the other priors);
        positive [B, P] bool;
        best_iou [B, P] float: IoU of each prior with its assigned ground truth.
    """
    geometry = priors if isinstance(priors, PriorGeometry) else prior_geometry(priors)
    num_priors = len(geometry.corners)
    if chunk_elements is not None:
        match_chunk = functools.partial(match, priors=geometry, iou_threshold=iou_threshold)
        return match_in_chunks(match_chunk, gt_boxes, gt_valid, num_priors, chunk_elements)
    # Padding rows become (0, 0, 0, 0), whose IoU with every prior is 0 <= any valid IoU.
    iou = prior_iou(gt_boxes * gt_valid[..., None], *geometry)  # [B, n, P] IoU with every prior
    best_iou = iou.amax(dim=1)  # [B, P]: each prior's best ground truth
    positive = best_iou >= iou_threshold  # [B, P]
    if iou_threshold <= 0:  # the 0 of images without objects would pass
        positive &= gt_valid.any(dim=1, keepdim=True)
    # Each ground truth's best prior is forced positive; the later ground truth wins a shared one.
    claimed, claimant = bipartite_claims(iou.argmax(dim=2), gt_valid, num_priors)  # [U] each
    positive.view(-1)[claimed] = True  # [B, P] -> [B*P]
    image, prior = positive.nonzero(as_tuple=True)  # [K] each
    matched_index = torch.zeros_like(positive, dtype=torch.long)  # [B, P]
    matched_index[image, prior] = first_row_reaching(  # each positive's first best row
        iou[image, :, prior][..., None], best_iou[image, prior][:, None], gt_valid[image])[:, 0]
    matched_index.view(-1)[claimed] = claimant
    best_iou.view(-1)[claimed] = iou[claimed // num_priors, claimant, claimed % num_priors]
    return matched_index, positive, best_iou
