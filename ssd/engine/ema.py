"""An exponential moving average (EMA) of the model's weights during training (train.ema_decay).

After every iteration t (counting the EMA's own updates from 1) each floating-point parameter
moves towards the trained one:

    decay_t = ema_decay * (1 - exp(-t / ema_ramp))
    ema     = decay_t * ema + (1 - decay_t) * weights

The ramp makes the average follow the fast early changes (decay_t is near 0 at first) and
reach `ema_decay` after a few `ema_ramp` iterations. Buffers (batch-norm running statistics,
the priors) are copied from the trained model, not averaged: they are statistics of the
trained weights' activations already.

Checkpoints store the average next to the raw weights (`ema`: {"model": state_dict, "updates"}):
--resume restores both; everything that loads weights from a checkpoint (ssd-predict, ssd-eval,
ssd-export, --weights) takes the averaged ones (ssd.weights).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ssd.engine.hooks import HookBase

# The checkpoint key of the averaged weights.
EMA_KEY = "ema"


class ModelEMA:
    """The moving average of a model's weights (a copy of the model, in eval mode).

    Args:
        model: the trained model (bare, not DDP-wrapped); copied as the starting average.
        decay: the decay the ramp approaches (e.g. 0.9998), in [0, 1).
        ramp: iterations of the warm-up ramp (see the module docstring), > 0.
    """

    def __init__(self, model: nn.Module, decay: float, ramp: float):
        self.decay, self.ramp = decay, ramp
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """The decay of update number `update` (1 for the first)."""
        return self.decay * (1.0 - math.exp(-update / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in `model`'s parameters (the same architecture); copy its buffers."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)  # of the new weights
        averaged = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        trained = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(averaged, trained, weight)  # ema + weight * (trained - ema)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


class EMAHook(HookBase):
    """Updates a `ModelEMA` of `trainer.model` after every iteration and puts it into the
    checkpoints (`ema`); `averaged()` is the model that evaluation during training scores.

    A resumed checkpoint without an average (trained with the EMA off) starts one from its
    weights.
    """

    def __init__(self, decay: float, ramp: float):
        self.decay, self.ramp = decay, ramp
        self.ema: ModelEMA | None = None

    def averaged(self) -> nn.Module:
        """The averaged model (eval mode), started from the trainer's model on first use."""
        if self.ema is None:
            self.ema = ModelEMA(self.trainer.model, self.decay, self.ramp)
        return self.ema.module

    def before_train(self) -> None:
        self.averaged()

    def after_step(self) -> None:
        self.ema.update(self.trainer.model)

    def state_dict(self) -> dict[str, Any]:
        self.averaged()
        return {EMA_KEY: self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged()  # from the resumed weights
        if state.get(EMA_KEY) is not None:
            self.ema.load_state_dict(state[EMA_KEY])
