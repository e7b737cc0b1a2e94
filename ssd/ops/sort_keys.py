"""Integer sort keys that order scores the way detection results are ordered.

``values.topk(k).indices`` of ``descending_keys(values)`` equals
``values.sort(dim=-1, descending=True, stable=True).indices[..., :k]`` bit for bit: larger
values first, equal values by lower index, the same on every device (``topk`` of floats leaves
the order of ties unspecified).
"""

from __future__ import annotations

import torch


def descending_keys(values: torch.Tensor) -> torch.Tensor:
    """Distinct int64 sort keys: larger value first, then lower index along the last dim.

    Args:
        values: FloatTensor[..., N] float32 >= 0 (the bits of a non-negative float32 order
            like the float itself).

    Returns:
        Int64Tensor[..., N]: (bits of the value) * 2^b + (N - 1 - index), b bits holding N.
    """
    size = values.shape[-1]
    index_bits = max(size - 1, 1).bit_length()
    reversed_index = torch.arange(size - 1, -1, -1, device=values.device)  # [N]
    keys = values.contiguous().view(torch.int32).long()  # [..., N]
    return keys.bitwise_left_shift_(index_bits).bitwise_or_(reversed_index)
