"""SGD and the learning-rate schedule: linear warmup, then x gamma at each step."""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float):
    """SGD over all trainable parameters (the paper's recipe)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def lr_factor(
    iteration: int, steps: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float
) -> float:
    """Multiplier of the base LR at `iteration` (0-based).

    Linear warmup from `warmup_factor` to 1 over `warmup_iters`, times gamma ** (number of
    steps already passed).
    """
    factor = gamma ** bisect_right(list(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer, steps, gamma, warmup_iters, warmup_factor):
    """A LambdaLR stepped once per iteration; its state_dict restores the position on resume."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, steps, gamma, warmup_iters, warmup_factor),
    )
