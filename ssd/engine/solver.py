"""Optimizer and learning-rate schedule.

`solver.optimizer`: `sgd` (the paper's recipe: momentum, L2 weight decay) or `adamw` (Adam with
decoupled weight decay; converges faster from scratch on short CPU budgets).
`solver.schedule`: `step` (x gamma at each of `lr_steps`) or `cosine` (half a cosine from the base
LR to 0 at `max_iter`); both start with a linear warmup.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Sequence

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float, name: str = "sgd"):
    """SGD (momentum, L2 decay) or AdamW (betas (momentum, 0.999), decoupled decay) over all
    trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"solver.optimizer={name!r}: expected one of {', '.join(OPTIMIZERS)}")


def warmup_factor_at(iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    """Linear ramp from `warmup_factor` (iteration 0) to 1 (iteration `warmup_iters`)."""
    if iteration >= warmup_iters:
        return 1.0
    alpha = iteration / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


def lr_factor(
    iteration: int, steps: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float
) -> float:
    """Step schedule: multiplier of the base LR at `iteration` (0-based).

    Linear warmup from `warmup_factor` to 1 over `warmup_iters`, times gamma ** (number of
    steps already passed).
    """
    factor = gamma ** bisect_right(list(steps), iteration)
    return factor * warmup_factor_at(iteration, warmup_iters, warmup_factor)


def cosine_factor(iteration: int, max_iter: int, warmup_iters: int, warmup_factor: float) -> float:
    """Cosine schedule: 0.5 * (1 + cos(pi * iteration / max_iter)) after the linear warmup."""
    progress = min(iteration, max_iter) / max(max_iter, 1)
    return 0.5 * (1 + math.cos(math.pi * progress)) * warmup_factor_at(iteration, warmup_iters, warmup_factor)


def build_scheduler(optimizer, steps, gamma, warmup_iters, warmup_factor, schedule: str = "step",
                    max_iter: int = 0):
    """A LambdaLR stepped once per iteration; its state_dict restores the position on resume."""
    if schedule == "step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: lr_factor(it, steps, gamma, warmup_iters, warmup_factor))
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: cosine_factor(it, max_iter, warmup_iters, warmup_factor))
    raise ValueError(f"solver.schedule={schedule!r}: expected one of {', '.join(SCHEDULES)}")


def set_schedule_iteration(scheduler, iteration: int) -> None:
    """Put a LambdaLR at `iteration`: every group's lr becomes base_lr * lambda(iteration).

    The schedule is a function of the iteration number, so a skipped optimizer step (GradScaler
    calibrating) must not shift it; this re-aligns the scheduler without calling step().
    """
    lrs = [base_lr * factor(iteration) for base_lr, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler.last_epoch = iteration
    scheduler._last_lr = lrs  # what get_last_lr() and state_dict() report


def advance_schedule(scheduler, iteration: int, optimizer_stepped: bool) -> None:
    """Set the lr of iteration `iteration` (0-based, i.e. the number of finished iterations).

    The scheduler steps only after a real optimizer step (stepping it after a skipped one is
    what PyTorch warns about); either way the lr is the schedule's value at `iteration`.
    """
    if optimizer_stepped:
        scheduler.step()
    if scheduler.last_epoch != iteration:
        set_schedule_iteration(scheduler, iteration)
