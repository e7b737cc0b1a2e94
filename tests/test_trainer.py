"""Trainer: learning, exact resume, atomic checkpoints, non-finite loss, SIGINT, DDP, CLI errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_helpers import REPO_ROOT, tiny_cfg, tiny_overrides, train_argv, train_main
from trainer_helpers import TRAIN_SCRIPT as TRAIN_SCRIPT_PATH

from ssd.engine import checkpoint as ckpt
from ssd.engine.metrics_log import read_metrics
from ssd.engine.trainer import Trainer, TrainingError

TRAIN_SCRIPT = str(TRAIN_SCRIPT_PATH)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def train_losses(output_dir):
    return {r["iteration"]: (r["loss_loc"], r["loss_conf"])
            for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_overfits_a_fixed_batch(data_root, tmp_path):
    trainer = Trainer.from_config(tiny_cfg(data_root, **{"solver.lr": 0.01}), output_dir=tmp_path,
                                  device="cpu", progress=False)
    images, targets, _ = next(trainer.make_batches(0))
    first = trainer.train_step(images, targets)["loss"].item()
    for _ in range(25):
        last = trainer.train_step(images, targets)["loss"].item()
    assert last < 0.6 * first


@pytest.mark.parametrize("solver", [
    {"solver.optimizer": "sgd", "solver.schedule": "step"},
    {"solver.optimizer": "adamw", "solver.schedule": "cosine", "solver.lr": 0.002},
], ids=["sgd-step", "adamw-cosine"])
def test_resume_reproduces_the_uninterrupted_run(data_root, tmp_path, solver):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    Trainer.from_config(tiny_cfg(data_root, **solver), output_dir=full_dir, device="cpu",
                        progress=False).train()
    # Same run stopped after 3 iterations, then resumed from its checkpoint up to 6 (the cosine
    # schedule follows max_iter, so the first part runs the full schedule and is cut short).
    first = Trainer.from_config(tiny_cfg(data_root, **solver), output_dir=split_dir, device="cpu",
                                progress=False)
    first.train(max_iter=3)
    resumed = Trainer.from_config(tiny_cfg(data_root, **solver), output_dir=split_dir, device="cpu",
                                  resume="auto", progress=False)
    assert resumed.iteration == 3
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(
        _lr_after(full_dir, 3))
    resumed.train()
    full, split = train_losses(full_dir), train_losses(split_dir)
    assert sorted(split) == [1, 2, 3, 4, 5, 6]
    for iteration in (4, 5, 6):
        assert split[iteration] == pytest.approx(full[iteration], rel=1e-6, abs=1e-7)
    a = ckpt.load_checkpoint(ckpt.checkpoint_path(full_dir, 6))["model"]
    b = ckpt.load_checkpoint(ckpt.checkpoint_path(split_dir, 6))["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def _lr_after(output_dir, iteration):
    records = [r for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"]
    return next(r["lr"] for r in records if r["iteration"] == iteration + 1)


def test_checkpoint_holds_full_training_state(data_root, tmp_path):
    Trainer.from_config(tiny_cfg(data_root), output_dir=tmp_path, device="cpu", progress=False).train()
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 6))
    assert state["iteration"] == 6
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= set(state)
    assert state["config"]["solver"]["max_iter"] == 6
    assert state["scheduler"]["last_epoch"] == 6
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [3, 6]
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_keeps_only_the_newest_checkpoints(data_root, tmp_path):
    cfg = tiny_cfg(data_root, **{"train.checkpoint_period": 1, "train.keep_checkpoints": 2})
    Trainer.from_config(cfg, output_dir=tmp_path, device="cpu", progress=False).train()
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [5, 6]


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    ckpt.atomic_save({"model": {"w": torch.ones(3)}, "iteration": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, stream, *args, **kwargs):
        stream.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.atomic_save({"model": {"w": torch.zeros(3)}, "iteration": 2}, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["iteration"] == 1


@pytest.mark.parametrize("saved_before", [True, False], ids=["with-checkpoint", "no-checkpoint"])
def test_non_finite_loss_stops_with_iteration_and_image_ids(data_root, tmp_path, saved_before):
    trainer = Trainer.from_config(tiny_cfg(data_root), output_dir=tmp_path, device="cpu", progress=False)
    if saved_before:
        trainer.save_checkpoint()
        good = ckpt.checkpoint_path(tmp_path, 0).read_bytes()
    real = trainer.criterion.forward

    def poisoned(loc, conf, priors, targets):
        losses = real(loc, conf, priors, targets)
        return {"loss_loc": losses["loss_loc"] * float("nan"), "loss_conf": losses["loss_conf"]}

    trainer.criterion.forward = poisoned
    with pytest.raises(TrainingError) as err:
        trainer.train()
    message = str(err.value)
    assert "Non-finite loss at iteration 1" in message
    assert any(image_id in message for image_id in trainer.train_set.image_ids)
    if saved_before:
        assert f"newest checkpoint, {ckpt.checkpoint_path(tmp_path, 0)}, is unchanged" in message
        assert ckpt.checkpoint_path(tmp_path, 0).read_bytes() == good
        assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [0]
    else:
        assert "No checkpoint was written" in message and "intact" not in message
        assert ckpt.list_checkpoints(tmp_path) == []


def test_sigterm_finishes_the_iteration_and_writes_a_checkpoint(data_root, tmp_path):
    cfg = tiny_cfg(data_root, **{"solver.max_iter": 1000, "train.checkpoint_period": 1000})
    trainer = Trainer.from_config(cfg, output_dir=tmp_path, device="cpu", progress=False)
    real, calls = trainer.criterion.forward, []

    def terminated_during_second_iteration(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    trainer.criterion.forward = terminated_during_second_iteration
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=r"SIGTERM.*iteration 2.*--resume auto"):
        trainer.train()
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [2]
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 2))["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_stops_with_its_name_and_saves_the_last_iteration(tmp_path, capsys, workers):
    from ssd.data import build_dataset
    from ssd.data.loader import InfiniteSampler

    data_root, output = tmp_path / "data", tmp_path / "run"
    cfg = tiny_cfg(data_root, **{"data.num_workers": workers})
    train_set = build_dataset(cfg, train=True)
    order = InfiniteSampler(len(train_set), seed=cfg.train.seed).epoch_indices(0)
    bad = train_set.records[order[cfg.solver.batch_size + 1]].image_path  # in the second batch
    Path(bad).write_bytes(b"\x00garbage, not a JPEG" * 10)
    code = train_main()(train_argv(data_root, output, **{"data.num_workers": workers}))
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last_line.startswith("error: Cannot decode image") and str(bad) in last_line
    assert "data.skip_bad=true" in last_line and "DataLoader worker" not in last_line
    assert "iteration 1 is saved" in last_line
    assert [it for it, _ in ckpt.list_checkpoints(output)] == [1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_sigint_writes_a_checkpoint(data_root, tmp_path):
    args = [sys.executable, TRAIN_SCRIPT, "--config", "configs/shapes.yaml", "--device", "cpu",
            "--output", str(tmp_path), "--no-progress", "--opts",
            *tiny_overrides(data_root, **{"solver.max_iter": 100000, "train.checkpoint_period": 100000})]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    saved = ckpt.list_checkpoints(tmp_path)
    assert len(saved) == 1 and saved[0][0] >= 2
    assert "--resume" in stderr
    assert ckpt.load_checkpoint(saved[0][1])["iteration"] == saved[0][0]


def test_ddp_two_cpu_processes_end_with_identical_weights(data_root, tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_port=29517", TRAIN_SCRIPT, "--config", "configs/shapes.yaml",
            "--device", "cpu", "--output", str(tmp_path), "--no-progress", "--opts",
            *tiny_overrides(data_root, **{"solver.max_iter": 3})]
    result = subprocess.run(args, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP: weights identical across 2 ranks" in result.stderr  # a log line
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [3]  # rank 0 only, no clash
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2, 3]


def test_cli_reports_config_errors_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, "--config", "configs/shapes.yaml", "--opts", "solver.lr=fast"],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "solver.lr" in result.stderr and "expects float" in result.stderr
    assert "Traceback" not in result.stderr


def test_voc300_without_data_names_the_expected_path(tmp_path):
    result = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, "--config", "configs/voc300.yaml", "--opts",
         f"data.root={tmp_path / 'VOCdevkit'}"],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert str(tmp_path / "VOCdevkit" / "VOC2007") in result.stderr
    assert "Traceback" not in result.stderr


def test_amp_runs_on_cpu_only_with_native_bfloat16(monkeypatch, caplog):
    from ssd import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="ssd.precision"):
        assert precision.training_precision(True, cpu) == "fp32"
    assert "no native bfloat16; training in float32" in caplog.text
    assert precision.training_precision(False, cpu) == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.training_precision(True, cpu) == "bf16"
    assert precision.training_precision(True, torch.device("cuda")) == "fp16"  # no CUDA needed to decide
