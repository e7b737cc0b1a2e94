"""Matching a batch in chunks of images, so that each chunk's [images, rows, P] IoU stays in
a CPU cache.

`match_in_chunks(match_chunk, ...)` equals ``match_chunk(gt_boxes, gt_valid)`` on the whole
batch, bit for bit, for any per-image computation: images are sorted by the ground-truth rows
they use, cut into chunks of at most about `chunk_elements` IoU entries, each chunk matched
over only the rows its images need (dropped rows are padding), and the results put back in
batch order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Results = tuple[torch.Tensor, ...]
# On CPU the per-prior steps (matching IoU, mining log-softmax) run over chunks of images
# whose tensors have about this many elements (2 MiB of float32), so that their temporaries
# stay in cache instead of streaming through memory shared with the other cores.
CPU_CHUNK_ELEMENTS = 1 << 19


def chunk_elements(device: torch.device) -> int | None:
    """Elements per chunk of a per-prior step: CPU_CHUNK_ELEMENTS on CPU; None (the whole
    batch at once, fewest kernel launches) on other devices."""
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else None


def match_in_chunks(
    match_chunk: Callable[[torch.Tensor, torch.Tensor], Results],
    gt_boxes: torch.Tensor,
    gt_valid: torch.Tensor,
    num_priors: int,
    chunk_elements: int,
) -> Results:
    """``match_chunk(gt_boxes, gt_valid)``, run chunk by chunk.

    Args:
        match_chunk: per-image matching of gt_boxes [b, n', 4] / gt_valid [b, n'] returning
            tensors whose first dimension is b.
        gt_boxes: [B, n, 4] padded ground truth; gt_valid: [B, n] bool.
        num_priors: P, the last dimension of the IoU.
        chunk_elements: at most about this many IoU entries (images * rows * P) per chunk;
            one image per chunk at least.

    Returns:
        match_chunk's tensors for the whole batch [B, ...], in batch order.
    """
    rows_used = rows_in_use(gt_valid)  # [B]
    order = rows_used.argsort(stable=True)  # [B]
    sorted_rows = rows_used[order].tolist()
    parts, start = [], 0
    for size in chunk_sizes(sorted_rows, num_priors, chunk_elements):
        images = order[start:start + size]
        kept = max(sorted_rows[start + size - 1], 1)  # the chunk's largest count; at least one
        parts.append(match_chunk(gt_boxes[images, :kept], gt_valid[images, :kept]))
        start += size
    back = order.argsort()  # [B]: the chunks' rows back in batch order
    return tuple(torch.cat(results)[back] for results in zip(*parts))


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
