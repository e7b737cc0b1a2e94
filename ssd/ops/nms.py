"""Greedy non-maximum suppression of many groups of boxes (one group per image and class).

Both forms equal the plain greedy loop, bit for bit: walk each group's candidates in the given
order and keep a box unless its IoU with a box kept before it, in torchvision's float32
arithmetic compared with the threshold as a float64, is above the threshold.

* `greedy_nms_loop`: one ``torchvision.ops.nms`` call per non-empty group; it skips the pairs a
  suppressed box would need, which makes it the fastest form on CPU.
* `greedy_nms_batched`: every group at once: a [G, k, k] overlap matrix, then suppression as a
  fixed-point iteration, a few tensor operations per iteration and usually 5 to 10
  iterations; no Python loop over groups or boxes. Meant for CUDA.
"""

from __future__ import annotations

import torch
from torchvision.ops import nms

from ssd.ops.boxes import pairwise_iou

OVERLAP_CHUNK_ELEMENTS = 1 << 24  # IoU entries computed at once by the batched form (64 MiB)
# The batched form counts overlapping kept boxes with a matrix product of 0/1 values: a sum of
# non-negative terms is > 0 exactly when one term is 1, whatever the float format's rounding.
# float16 on CUDA (half the memory of float32); float32 elsewhere (fast on every CPU).
OVERLAP_MATMUL_DTYPE = {"cuda": torch.float16}


def greedy_nms_loop(boxes: torch.Tensor, candidate: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS of each group with one ``torchvision.ops.nms`` call per non-empty group.

    Args:
        boxes: FloatTensor[G, k, 4] xyxy, each group in its NMS order.
        candidate: BoolTensor[G, k], True for a prefix of each group (the candidates).
        threshold: IoU above which a box is suppressed.

    Returns:
        BoolTensor[G, k]: the boxes NMS keeps.
    """
    num_groups, limit = candidate.shape
    # nms sorts by score: strictly decreasing stand-in scores keep the given order exactly.
    rank_scores = torch.arange(limit, 0, -1, dtype=boxes.dtype, device=boxes.device)  # [k]
    kept = [
        group * limit + nms(boxes[group, :count], rank_scores[:count], threshold)
        for group, count in enumerate(candidate.sum(dim=1).tolist()) if count
    ]
    keep = torch.zeros(num_groups * limit, dtype=torch.bool, device=boxes.device)
    if kept:
        keep[torch.cat(kept)] = True
    return keep.reshape(num_groups, limit)  # [G*k] -> [G, k]


def greedy_nms_batched(boxes: torch.Tensor, candidate: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS of all groups at once, as a fixed-point iteration of tensor operations.

    Greedy NMS keeps box i when it is a candidate and no kept box before it overlaps it. Each
    iteration applies that rule to every box at once, given the previous iteration's kept set,
    starting from all candidates. Box i's fate depends only on boxes before it, so after
    iteration t the first t boxes of every group are settled; and a set the rule maps to itself
    is the greedy result (the only fixed point, by induction over the boxes). So the iteration
    stops as soon as nothing changes: after as many iterations as the longest chain of boxes
    suppressing or freeing one another, 5 to 10 on SSD300 outputs (at most k + 1). Each
    iteration's check reads one flag back from the device.

    Args:
        boxes: FloatTensor[G, k, 4] xyxy, each group in its NMS order.
        candidate: BoolTensor[G, k], the boxes taking part.
        threshold: IoU above which a box is suppressed.

    Returns:
        BoolTensor[G, k]: the boxes NMS keeps.
    """
    dtype = OVERLAP_MATMUL_DTYPE.get(boxes.device.type, torch.float32)
    earlier_overlaps = overlap_matrix(boxes, threshold, dtype).triu_(diagonal=1)  # [G, j, i]: j < i
    keep = candidate
    for _ in range(candidate.shape[1] + 1):
        # [G, 1, k] @ [G, k, k] -> [G, 1, k] -> [G, k]: how many kept boxes before i overlap it
        overlapped_by = torch.bmm(keep.to(dtype)[:, None, :], earlier_overlaps)[:, 0]
        keep, previous = candidate & ~(overlapped_by > 0), keep
        if torch.equal(keep, previous):
            break
    return keep


def overlap_matrix(boxes: torch.Tensor, threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """[G, k, 4] xyxy -> Tensor[G, k, k] of `dtype`, 1 where IoU > threshold, else 0,
    computed in group chunks.

    The IoU is torchvision's (same float32 operations), compared as torchvision compares it
    with a float64 threshold, so both NMS forms take the same decisions.
    """
    num_groups, limit = boxes.shape[:2]
    if num_groups == 0:
        return boxes.new_zeros(0, limit, limit, dtype=dtype)
    strict_threshold = float32_below_or_at(threshold)
    groups_per_chunk = max(1, OVERLAP_CHUNK_ELEMENTS // max(limit * limit, 1))
    return torch.cat([(pairwise_iou(part, part) > strict_threshold).to(dtype)  # [chunk, k, k] each
                      for part in boxes.split(groups_per_chunk)])


def float32_below_or_at(threshold: float) -> float:
    """The largest float32 <= threshold: for float32 x, x > it exactly when x > threshold."""
    rounded = torch.tensor(threshold, dtype=torch.float32)
    if rounded.double() > threshold:
        rounded = torch.nextafter(rounded, torch.tensor(float("-inf")))
    return rounded.item()
