"""Pure box maths. Formats: "xyxy" = (xmin, ymin, xmax, ymax); "cxcywh" = (cx, cy, w, h).

All functions take and return tensors whose last dimension is 4 and work on any leading
batch shape unless the docstring says otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from ssd import defaults

# The largest size offset `decode` exponentiates (after the variance): a box grows to at most
# 1000/16 times its prior, as torchvision's bbox_xform_clip. A diverged offset would overflow
# exp to boxes of (-inf, -inf, inf, inf), whose IoU is NaN, so NMS would never suppress them.
MAX_SIZE_OFFSET = math.log(1000.0 / 16)


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


class _GeometryMemo(NamedTuple):
    """The last priors passed to `prior_geometry`, their version counter and geometry."""

    priors: torch.Tensor
    version: int
    geometry: tuple[torch.Tensor, PriorIntervals]


_last_geometry: _GeometryMemo | None = None


def prior_geometry(priors_cxcywh: torch.Tensor) -> tuple[torch.Tensor, PriorIntervals]:
    """Corners [P, 4] xyxy and `prior_intervals` of priors [P, 4] (cx, cy, w, h).

    The loss passes the same priors tensor (a model buffer) every step, so the result for
    the last tensor is kept: finding the distinct intervals sorts all P priors twice. The
    memo holds that tensor itself, so its identity cannot pass to another tensor, and its
    version counter, so an in-place change is seen. Inference tensors keep no version
    counter and are never memoised.
    """
    global _last_geometry
    memo = _last_geometry
    if torch.is_inference(priors_cxcywh):
        return _compute_geometry(priors_cxcywh)
    if memo is None or memo.priors is not priors_cxcywh or memo.version != priors_cxcywh._version:
        memo = _GeometryMemo(priors_cxcywh, priors_cxcywh._version, _compute_geometry(priors_cxcywh))
        _last_geometry = memo
    return memo.geometry


def _compute_geometry(priors_cxcywh: torch.Tensor) -> tuple[torch.Tensor, PriorIntervals]:
    """What `prior_geometry` returns, computed afresh."""
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)
    return priors_xyxy, prior_intervals(priors_xyxy)


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
    priors_cxcywh: torch.Tensor,
    iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
    chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign every prior of every image to a ground truth box, for a whole batch at once.

    Each prior takes its highest-IoU ground truth; below `iou_threshold` it is background.
    Every ground truth then claims its own best prior even below the threshold (the
    bipartite step of the paper); when two ground truths share a best prior the later one
    wins, as in the classic implementation.

    Args:
        gt_boxes: [B, n, 4] xyxy normalised ground truth, padded (see `pad_targets`).
        gt_valid: [B, n] bool, False for padding.
        priors_cxcywh: [P, 4] default boxes.
        iou_threshold: minimum IoU for a positive prior.
        chunk_elements: None matches the whole batch at once. Otherwise images are matched
            in chunks whose [images, rows, P] IoU tensors have at most about this many
            elements, so that their steps stay in a CPU cache: images in order of the rows
            they use, each chunk cut to its largest count (padding rows none of its images
            needs are dropped), at least one image per chunk. The results do not depend on it.

    Returns:
        matched_index [B, P] long: index into n of each positive prior's ground truth (0 for
            the other priors);
        positive [B, P] bool;
        best_iou [B, P] float: IoU of each prior with its assigned ground truth.
    """
    priors_xyxy, intervals = prior_geometry(priors_cxcywh)
    if chunk_elements is None:
        return _match_chunk(gt_boxes, gt_valid, priors_xyxy, intervals, iou_threshold)
    # Images in order of the rows they use, so that a chunk of images with few objects is
    # matched over [images, few, P] rather than the batch's [images, n, P].
    rows_used = rows_in_use(gt_valid)  # [B]
    order = rows_used.argsort(stable=True)  # [B]
    sorted_rows = rows_used[order].tolist()
    parts, start = [], 0
    for size in chunk_sizes(sorted_rows, len(priors_xyxy), chunk_elements):
        images = order[start:start + size]
        kept = max(sorted_rows[start + size - 1], 1)  # the chunk's largest count; at least one
        parts.append(_match_chunk(gt_boxes[images, :kept], gt_valid[images, :kept], priors_xyxy,
                                  intervals, iou_threshold))
        start += size
    back = order.argsort()  # [B]: the chunks' rows back in batch order
    matched_index, positive, best_iou = (torch.cat(results)[back] for results in zip(*parts))
    return matched_index, positive, best_iou


def chunk_sizes(sorted_rows: Sequence[int], num_priors: int, chunk_elements: int) -> list[int]:
    """Split images with ascending row counts into consecutive chunks of at most about
    `chunk_elements` IoU entries (images * largest rows * num_priors), one image at least."""
    sizes: list[int] = []
    size = 0
    for rows in sorted_rows:
        if size and (size + 1) * max(rows, 1) * num_priors > chunk_elements:
            sizes.append(size)
            size = 0
        size += 1
    return sizes + [size] if size else sizes


def rows_in_use(valid: torch.Tensor) -> torch.Tensor:
    """[B, n] bool -> [B] long: 1 + the index of each row's last True entry (0 without any)."""
    positions = torch.arange(1, valid.shape[1] + 1, device=valid.device)  # [n]
    return (positions * valid).amax(dim=1)


def _match_chunk(
    gt_boxes: torch.Tensor,
    gt_valid: torch.Tensor,
    priors_xyxy: torch.Tensor,
    intervals: PriorIntervals,
    iou_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`match` of gt_boxes [B, n, 4] / gt_valid [B, n] (B: this chunk's images).

    Only the [B, n, P] IoU and its two reductions run over every prior; the bipartite claims
    and the matched rows of the positives are found on the few priors they concern.
    """
    num_priors = priors_xyxy.shape[0]
    # Padding rows become (0, 0, 0, 0), whose IoU with every prior is 0 <= any valid IoU, so
    # the maximum over all rows is the maximum over the valid ones (0 without any).
    gt_boxes = gt_boxes * gt_valid[..., None]  # [B, n, 4]
    iou = prior_iou(gt_boxes, priors_xyxy, intervals)  # [B, n, P], >= 0
    best_iou = iou.amax(dim=1)  # [B, P]: best ground truth per prior
    best_prior = iou.argmax(dim=2)  # [B, n]: best prior per ground truth
    positive = best_iou >= iou_threshold  # [B, P]
    if iou_threshold <= 0:  # the 0 of images without objects would pass
        positive &= gt_valid.any(dim=1, keepdim=True)

    claimed, claimant = bipartite_claims(best_prior, gt_valid, num_priors)  # [U] each
    flat_positive = positive.view(-1)  # [B, P] -> [B*P]
    flat_positive[claimed] = True
    image, prior = positive.nonzero(as_tuple=True)  # [K] each
    # The first valid row reaching each positive's best IoU: [K, n, 1] against [K, 1].
    first = first_row_reaching(iou[image, :, prior][..., None], best_iou[image, prior][:, None],
                               gt_valid[image])[:, 0]  # [K]
    matched_index = torch.zeros_like(positive, dtype=torch.long)  # [B, P]
    matched_index[image, prior] = first
    matched_index.view(-1)[claimed] = claimant  # [B, P] -> [B*P]
    claimed_image, claimed_prior = claimed // num_priors, claimed % num_priors  # [U] each
    best_iou.view(-1)[claimed] = iou[claimed_image, claimant, claimed_prior]  # [B, P] -> [B*P]
    return matched_index, positive, best_iou


def bipartite_claims(best_prior: torch.Tensor, valid: torch.Tensor,
                     num_priors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bipartite step of matching: every valid ground truth claims its best prior.

    Where several ground truths of an image claim the same prior the last one wins, as the
    loop `for j in range(n): best_truth_idx[best_prior_idx[j]] = j` of the classic port does.

    Args:
        best_prior: [B, n] long, each ground truth's highest-IoU prior.
        valid: [B, n] bool, False for padding.
        num_priors: P.

    Returns:
        claimed [U] long, the distinct claimed priors as indices into the flattened [B * P];
        claimant [U] long, the ground-truth row that keeps each.
    """
    image, row = valid.nonzero(as_tuple=True)  # [V] each
    slot = image * num_priors + best_prior[image, row]  # [V]
    claimed, which = slot.unique(return_inverse=True)  # [U], [V]
    claimant = torch.full_like(claimed, -1).scatter_reduce_(0, which, row, reduce="amax")  # [U]
    return claimed, claimant


def first_row_reaching(values: torch.Tensor, target: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
    """Per column, the first valid row whose value reaches (>=) the target.

    With target = the maximum over the valid rows this is the first maximal valid row, the
    index `max(dim=1)` returns.

    Args:
        values: [B, n, P].
        target: [B, P].
        valid: [B, n] bool.

    Returns:
        [B, P] long row index; 0 where no valid row reaches the target.
    """
    reaching = (values >= target[:, None]) & valid[:, :, None]  # [B, n, P]
    return reaching.to(torch.uint8).argmax(dim=1)  # the first 1 (argmax keeps the first maximum)
