"""Optimizers and learning-rate schedules."""

import math

import pytest
import torch
from torch import nn

from ssd.config import ConfigError, load_config
from ssd.engine.solver import build_optimizer, build_scheduler, cosine_factor, lr_factor


def _lrs(schedule, iterations, **kwargs):
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, 0.1, 0.9, 0.0)
    scheduler = build_scheduler(optimizer, schedule=schedule, **kwargs)
    lrs = []
    for _ in range(iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_schedule_warms_up_then_drops_at_each_step():
    lrs = _lrs("step", 12, steps=[6, 9], gamma=0.1, warmup_iters=4, warmup_factor=0.25)
    expected = [0.1 * (0.25 * (1 - i / 4) + i / 4) for i in range(4)] + [0.1] * 2 + [0.01] * 3 + [0.001] * 3
    assert lrs == pytest.approx(expected)
    assert lr_factor(6, [6, 9], 0.1, 0, 1.0) == pytest.approx(0.1)


def test_cosine_schedule_follows_half_a_cosine_to_zero():
    lrs = _lrs("cosine", 10, steps=[], gamma=0.1, warmup_iters=0, warmup_factor=1.0, max_iter=10)
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)])
    assert cosine_factor(10, 10, 0, 1.0) == pytest.approx(0.0)
    assert cosine_factor(15, 10, 0, 1.0) == pytest.approx(0.0)  # stays at 0 past max_iter
    # Warmup multiplies the cosine.
    assert cosine_factor(1, 10, 2, 0.5) == pytest.approx(0.75 * 0.5 * (1 + math.cos(math.pi / 10)))


def test_adamw_uses_momentum_as_beta1_and_decoupled_decay():
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, 0.01, 0.8, 0.05, name="adamw")
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.999) and group["weight_decay"] == 0.05 and group["lr"] == 0.01
    assert isinstance(build_optimizer(model, 0.01, 0.9, 0.0), torch.optim.SGD)


def test_unknown_optimizer_or_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="solver.optimizer='adam'.*sgd, adamw"):
        build_optimizer(nn.Linear(2, 2), 0.1, 0.9, 0.0, name="adam")
    with pytest.raises(ValueError, match="solver.schedule='poly'.*step, cosine"):
        build_scheduler(build_optimizer(nn.Linear(2, 2), 0.1, 0.9, 0.0), [], 0.1, 0, 1.0, schedule="poly")
    with pytest.raises(ConfigError, match="solver.optimizer"):
        load_config(overrides=["solver.optimizer=adam"])
