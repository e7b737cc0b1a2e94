"""Trainer built from parts: the hook order and the optimizer steps."""

import pytest
import torch
from torch import nn

from ssd.engine.hooks import HookBase
from ssd.engine.trainer import Trainer

NUM_PRIORS, NUM_CLASSES, BATCH = 3, 2, 2


class ToyDetector(nn.Module):
    """images [B, 3, 2, 2] -> loc [B, P, 4], conf [B, P, C] through one linear layer."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * 2 * 2, NUM_PRIORS * (4 + NUM_CLASSES))
        self.register_buffer("priors", torch.rand(NUM_PRIORS, 4))

    def forward(self, images):
        out = self.head(images.flatten(1)).view(len(images), NUM_PRIORS, 4 + NUM_CLASSES)
        return out[..., :4], out[..., 4:]


def toy_loss(loc, conf, priors, targets):
    return {"loss_loc": loc.pow(2).mean(), "loss_conf": conf.pow(2).mean()}


class Recorder(HookBase):
    """Records every hook call as (method, trainer.iteration)."""

    def __init__(self, calls):
        self.calls = calls

    def before_train(self):
        self.calls.append(("before_train", self.trainer.iteration))

    def before_step(self):
        self.calls.append(("before_step", self.trainer.iteration))

    def after_step(self):
        self.calls.append(("after_step", self.trainer.iteration))

    def after_train(self):
        self.calls.append(("after_train", self.trainer.iteration))


class CountingSGD(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def toy_trainer(hooks, max_iter):
    torch.manual_seed(0)
    model = ToyDetector()
    batches = [(torch.rand(BATCH, 3, 2, 2), [torch.zeros(0, 5)] * BATCH, torch.arange(BATCH))
               for _ in range(2)]  # repeated: more iterations than batches
    return Trainer(model, toy_loss, CountingSGD(model.parameters()), None, batches, hooks,
                   max_iter=max_iter, progress=False)


def expected_calls(iterations):
    steps = [call for i in range(iterations) for call in (("before_step", i), ("after_step", i + 1))]
    return [("before_train", 0), *steps, ("after_train", iterations)]


def test_hooks_run_in_order_around_every_optimizer_step():
    calls = []
    trainer = toy_trainer([Recorder(calls)], max_iter=3)
    trainer.train()
    assert calls == expected_calls(3)
    assert trainer.optimizer.steps == 3 and trainer.iteration == 3
    assert torch.isfinite(trainer.losses["loss"])


def test_after_train_runs_after_an_error_and_the_error_is_raised():
    calls = []

    class FailAtSecondStep(HookBase):
        def after_step(self):
            if self.trainer.iteration == 2:
                raise RuntimeError("hook failed")

    seen_errors = []

    class SeesTheError(HookBase):
        def after_train(self):
            seen_errors.append(self.trainer.error)

    trainer = toy_trainer([FailAtSecondStep(), Recorder(calls), SeesTheError()], max_iter=5)
    with pytest.raises(RuntimeError, match="hook failed"):
        trainer.train()
    # the failing hook comes first: the recorder's after_step of iteration 2 never ran
    assert calls == expected_calls(2)[:-2] + [("after_train", 2)]
    assert trainer.optimizer.steps == 2
    assert isinstance(seen_errors[0], RuntimeError)


def test_a_hook_can_stop_training_early():
    calls = []

    class StopAfterTwo(HookBase):
        def after_step(self):
            if self.trainer.iteration == 2:
                self.trainer.request_stop("enough")

    trainer = toy_trainer([StopAfterTwo(), Recorder(calls)], max_iter=10)
    trainer.train()
    assert calls == expected_calls(2) and trainer.optimizer.steps == 2
    assert trainer.stop_reason == "enough" and trainer.error is None
