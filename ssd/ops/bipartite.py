"""The bipartite step of matching and the matched row of each positive prior, computed on
the few priors they concern instead of loops or full [B, n, P] passes.

* `bipartite_claims` equals the classic loop ``for j in range(n): best_truth_idx[best_prior_idx[j]] = j``
  run per image (the later ground truth wins a shared prior).
* `first_row_reaching` equals, per column, ``min(r for r in valid rows if values[r] >= target)``
  (0 without any); with target = the maximum over the valid rows, the index ``max(dim=1)``
  returns.
"""

from __future__ import annotations

import torch


def bipartite_claims(best_prior: torch.Tensor, valid: torch.Tensor,
                     num_priors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every valid ground truth claims its best prior; of several on one prior the last wins.

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

    Args:
        values: [B, n, P].
        target: [B, P].
        valid: [B, n] bool.

    Returns:
        [B, P] long row index; 0 where no valid row reaches the target.
    """
    reaching = (values >= target[:, None]) & valid[:, :, None]  # [B, n, P]
    return reaching.to(torch.uint8).argmax(dim=1)  # the first 1 (argmax keeps the first maximum)
