"""Hard negative mining of SSD's confidence loss, without gradient.

* `background_loss(conf, images_per_chunk)` equals ``-F.log_softmax(conf, dim=-1)[..., 0]``
  bit for bit; computed over chunks of images so that the [chunk, P, C] temporaries stay in
  a CPU cache.
* `hard_negative_mask(loss, positive, ratio)` equals the classic double-sort rank selection
  per image: ``rank = loss_without_positives.sort(descending).indices.argsort()``, kept where
  ``rank < min(ceil(ratio * num_pos), num_negatives)`` (the same set whenever the losses
  are distinct), found with one ``topk`` of the batch's largest count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssd.ops.chunked_match import chunk_elements


def background_loss(conf: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every prior against the background class, without gradient.

    Args:
        conf: [B, P, C] logits, class 0 = background.

    Returns:
        [B, P] -log_softmax(conf)[..., 0].
    """
    elements = chunk_elements(conf.device)
    per_image = max(conf.shape[1] * conf.shape[2], 1)  # P * C
    chunk = max(1, elements // per_image) if elements is not None else max(len(conf), 1)
    with torch.no_grad():
        # Fused log-softmax (about twice as fast as logsumexp - conf[..., 0]); each chunk
        # [chunk, P, C] -> [chunk, P] is written into its rows of [B, P].
        loss = conf.new_empty(conf.shape[:2])  # [B, P]
        for part, rows in zip(conf.split(chunk), loss.split(chunk)):
            torch.neg(F.log_softmax(part, dim=-1)[..., 0], out=rows)
    return loss


def hard_negative_mask(
    background_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: float
) -> torch.Tensor:
    """Per image, the ceil(neg_pos_ratio * num_pos) negatives with the largest background loss.

    A fractional ratio rounds up (1.5 x 3 positives keeps 5), as the classic port and
    torchvision, which keep the negatives ranked below ratio * num_pos; the product is taken in
    float64. The count is capped at the number of negatives of the image; an image without
    positives keeps no negatives.

    Args:
        background_loss: [B, P] cross-entropy of each prior against the background class.
        positive: [B, P] bool.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        [B, P] bool, True for the mined negatives (never a positive).
    """
    with torch.no_grad():
        num_priors = positive.shape[1]
        num_pos = positive.sum(dim=1)  # [B]
        num_neg = (num_pos.double() * neg_pos_ratio).ceil().long()  # [B]
        num_neg = torch.minimum(num_neg, num_priors - num_pos)  # at most every negative
        ranked = torch.where(positive, float("-inf"), background_loss.detach())  # [B, P]
        k = int(num_neg.max()) if num_neg.numel() else 0
        top = ranked.topk(k, dim=1).indices  # [B, k], hardest first
        keep = torch.arange(k, device=positive.device) < num_neg[:, None]  # [B, k]
        return torch.zeros_like(positive).scatter_(1, top, keep)
