"""Mixed-precision safety: skipped GradScaler steps keep the schedule, gradient clipping after
unscaling, loss-spike warnings, and L2Norm without float16 overflow."""

import logging
import warnings

import pytest
import torch
from trainer_helpers import tiny_cfg

from ssd.config import ConfigError, load_config
from ssd.engine.hooks import LossSpikeMonitor
from ssd.engine.metrics_log import read_metrics
from ssd.engine.solver import lr_factor
from ssd.engine.trainer import Trainer, train_step
from ssd.modeling.vgg import L2Norm

# Unit roundoff of each dtype (half the spacing of numbers near 1): float16 keeps 11 significant
# bits, bfloat16 8.
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def nan_gradients_on_first_call(criterion):
    """Wrap `criterion` so that the first call's loss is finite but its gradients are NaN (as an
    overflowing float16 backward would make them): GradScaler must skip that step."""
    real, calls = criterion.forward, []

    def forward(loc, conf, priors, targets):
        losses = real(loc, conf, priors, targets)
        calls.append(1)
        if len(calls) == 1:
            zero_with_infinite_slope = torch.sqrt(loc.sum() - loc.sum().detach())
            losses["loss_loc"] = losses["loss_loc"] + 0 * zero_with_infinite_slope
        return losses

    criterion.forward = forward


def test_skipped_scaler_step_keeps_the_schedule_and_does_not_warn(data_root, tmp_path):
    cfg = tiny_cfg(data_root, **{"solver.max_iter": 5, "solver.warmup_iters": 3, "solver.schedule": "step"})
    trainer = Trainer.from_config(cfg, output_dir=tmp_path, device="cpu", progress=False)
    initial_scale = 2.0 ** 8
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=initial_scale)
    nan_gradients_on_first_call(trainer.criterion)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert trainer.scaler.get_scale() < initial_scale  # the first step really was skipped
    solver = cfg.solver
    logged = {r["iteration"]: r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")
              if r["kind"] == "train"}
    expected = {it: solver.lr * lr_factor(it - 1, solver.lr_steps, solver.gamma, solver.warmup_iters,
                                          solver.warmup_factor) for it in range(1, 6)}
    assert logged == pytest.approx(expected, rel=1e-12)


def _global_grad_norm(model):
    return torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])).item()


def test_gradient_clipping_applies_to_unscaled_gradients(data_root, tmp_path):
    cfg = tiny_cfg(data_root)
    trainer = Trainer.from_config(cfg, output_dir=tmp_path, device="cpu", progress=False)
    images, targets, _ = next(trainer.make_batches(0))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    parts = (trainer.model, trainer.criterion, trainer.optimizer, scaler, images, targets, "fp32", False)
    train_step(*parts)
    unclipped = _global_grad_norm(trainer.model)
    limit = unclipped / 10
    train_step(*parts, clip_grad_norm=limit)
    # Clipping the scaled gradients would leave limit / scale after unscaling.
    assert _global_grad_norm(trainer.model) == pytest.approx(limit, rel=1e-4)


def test_clip_grad_norm_config_key():
    assert load_config(overrides=[]).solver.clip_grad_norm is None
    assert load_config(overrides=["solver.clip_grad_norm=5"]).solver.clip_grad_norm == 5.0
    with pytest.raises(ConfigError, match="solver.clip_grad_norm.*>= 0"):
        load_config(overrides=["solver.clip_grad_norm=-1"])


def test_loss_spike_is_logged_with_its_iteration(caplog):
    monitor = LossSpikeMonitor(factor=3.0, decay=0.9, warmup=5)
    with caplog.at_level(logging.WARNING, logger="ssd.engine.hooks"):
        early = [monitor.update(it, loss) for it, loss in enumerate([1.0, 10.0, 1.0, 1.0, 1.0], 1)]
        steady = [monitor.update(it, 1.0) for it in range(6, 20)]
        spike = monitor.update(20, 4.0)
        mild = monitor.update(21, 2.0)
    assert not any(early) and not any(steady) and spike and not mild
    assert "Loss spike at iteration 20" in caplog.text and "iteration 2:" not in caplog.text


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_l2norm_of_large_half_precision_activations_is_finite(dtype):
    torch.manual_seed(0)
    layer = L2Norm(512)
    x32 = (torch.rand(2, 512, 3, 3) * 300).to(dtype).float()  # values representable in `dtype`
    expected = layer(x32)
    with torch.no_grad():
        out = layer(x32.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    # One rounding of the float32 result to `dtype`.
    torch.testing.assert_close(out.float(), expected.detach(), rtol=UNIT_ROUNDOFF[dtype], atol=0)
