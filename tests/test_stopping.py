"""Runs that stop themselves and survive the cluster: the weight average (train.ema_decay),
early stopping (train.patience), the time budget (train.max_time), preemption by a signal
(train.preempt_signal) with its exit status, and train.sync_bn's refusal on the CPU."""

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from trainer_helpers import (
    REPO_ROOT,
    TRAIN_SCRIPT,
    signal_during_iteration,
    tiny_cfg,
    train_argv,
    train_main,
)

from ssd.engine import checkpoint as ckpt
from ssd.engine.ema import EMA_KEY
from ssd.engine.hooks import HookBase
from ssd.engine.metrics_log import read_metrics
from ssd.engine.preemption import EXIT_PREEMPTED
from ssd.engine.trainer import Trainer
from ssd.errors import ConfigError
from ssd.weights import read_checkpoint

EMA = {"train.ema_decay": 0.9, "train.ema_ramp": 2}
# The preemption stop of the README's sbatch example: torchrun passes SIGUSR1 on to its workers
# and gives them this long to save before it kills them.
TORCHRUN_SIGNAL_FLAGS = ["--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                         "--shutdown-timeout=110"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def train_losses(output_dir):
    return {r["iteration"]: (r["loss_loc"], r["loss_conf"])
            for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"}


def stop_records(output_dir):
    return [r for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "stop"]


def trainer_for(data_root, output_dir, resume=None, **overrides):
    return Trainer.from_config(tiny_cfg(data_root, **overrides), output_dir=output_dir,
                               device="cpu", resume=resume, progress=False)


class WeightRecorder(HookBase):
    """The raw parameters before training and after every iteration (copies)."""

    def __init__(self):
        self.weights = []

    def _record(self):
        self.weights.append({k: p.detach().clone() for k, p in self.trainer.model.named_parameters()})

    def before_train(self):
        self._record()

    def after_step(self):
        self._record()


# ------------------------------------------------------------------------------ EMA
def test_ema_weights_are_the_hand_computed_average_and_buffers_are_copied(data_root, tmp_path):
    recorder = WeightRecorder()
    cfg = tiny_cfg(data_root, **EMA, **{"solver.max_iter": 3})
    Trainer.from_config(cfg, output_dir=tmp_path, device="cpu", progress=False,
                        hooks=[recorder]).train()
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 3))
    expected = dict(recorder.weights[0])
    for update, raw in enumerate(recorder.weights[1:], start=1):
        decay = 0.9 * (1 - math.exp(-update / 2))
        expected = {k: decay * expected[k] + (1 - decay) * raw[k] for k in expected}
    assert state[EMA_KEY]["updates"] == 3
    averaged = state[EMA_KEY]["model"]
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(state["model"][key], recorder.weights[-1][key])  # raw kept
    assert not torch.equal(averaged["conf.0.weight"], state["model"]["conf.0.weight"])
    running = [k for k in state["model"] if k.endswith("running_mean")]
    assert running and all(torch.equal(averaged[k], state["model"][k]) for k in running)
    # Prediction, evaluation and export read the average.
    weights, _ = read_checkpoint(ckpt.checkpoint_path(tmp_path, 3))
    assert torch.equal(weights["conf.0.weight"], averaged["conf.0.weight"])


def test_resume_continues_the_ema_and_the_losses_exactly(data_root, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    trainer_for(data_root, full, **EMA).train()
    trainer_for(data_root, split, **EMA).train(max_iter=3)
    trainer_for(data_root, split, resume="auto", **EMA).train()
    full_losses, split_losses = train_losses(full), train_losses(split)
    assert sorted(split_losses) == [1, 2, 3, 4, 5, 6]
    for iteration in (4, 5, 6):
        assert split_losses[iteration] == pytest.approx(full_losses[iteration], rel=1e-6, abs=1e-7)
    a = ckpt.load_checkpoint(ckpt.checkpoint_path(full, 6))
    b = ckpt.load_checkpoint(ckpt.checkpoint_path(split, 6))
    assert a[EMA_KEY]["updates"] == b[EMA_KEY]["updates"] == 6
    for key, value in a[EMA_KEY]["model"].items():
        torch.testing.assert_close(b[EMA_KEY]["model"][key], value, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ patience
def test_patience_stops_when_the_map_does_not_improve_and_resume_continues(data_root, tmp_path):
    # An lr of 1e-9 leaves the weights, hence the mAP, as they are: evaluation 2 is no better.
    frozen = {"solver.lr": 1e-9, "train.eval_period": 1, "train.checkpoint_period": 100}
    trainer = trainer_for(data_root, tmp_path, **frozen, **{"train.patience": 1})
    trainer.train()
    assert trainer.iteration == 2 and trainer.stop_reason == "patience"
    [stop] = stop_records(tmp_path)
    assert stop["reason"] == "patience" and stop["iteration"] == 2
    assert stop["checkpoint"] == ckpt.checkpoint_path(tmp_path, 2).name
    assert stop["evaluations_without_improvement"] == 1
    saved = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 2))
    assert saved["evaluations_without_improvement"] == 1
    # More patience: the run goes on from iteration 2, counting the evaluation it had seen.
    resumed = trainer_for(data_root, tmp_path, resume="auto", **frozen, **{"train.patience": 3})
    resumed.train()
    assert resumed.iteration == 4 and resumed.stop_reason == "patience"
    assert sorted(train_losses(tmp_path)) == [1, 2, 3, 4]
    assert [r["iteration"] for r in stop_records(tmp_path)] == [2, 4]


def test_patience_without_evaluations_is_a_config_error(data_root):
    with pytest.raises(ConfigError, match=r"train.patience.*train.eval_period is 0"):
        tiny_cfg(data_root, **{"train.patience": 2, "train.eval_period": 0})


# ------------------------------------------------------------------------ max_time
def test_time_budget_stops_the_run_and_a_larger_one_continues_it(data_root, tmp_path):
    # 1 ms: spent by the first iteration, not before it.
    trainer = trainer_for(data_root, tmp_path, **{"train.max_time": 0.001})
    trainer.train()
    assert trainer.iteration == 1 and trainer.stop_reason == "max_time"
    [stop] = stop_records(tmp_path)
    assert stop["reason"] == "max_time" and stop["seconds"] >= 0.001
    spent = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 1))["train_seconds"]
    assert spent >= 0.001
    resumed = trainer_for(data_root, tmp_path, resume="auto", **{"train.max_time": 1000.0})
    resumed.train()
    assert resumed.iteration == 6 and resumed.stop_reason is None
    assert sorted(train_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 6))["train_seconds"] > spent


# -------------------------------------------------------------------------- SIGUSR1
def _env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _signal_when_training(proc, metrics, sig=signal.SIGUSR1, lines=2, timeout=240):
    """Send `sig` to `proc` once metrics.jsonl holds `lines` records (the loop is running)."""
    deadline = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= lines):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(sig)
    return proc.communicate(timeout=timeout)


def test_sigusr1_saves_exits_75_and_resume_gives_the_uninterrupted_losses(data_root, tmp_path, one_thread):
    # one_thread: the subprocess runs with OMP_NUM_THREADS=1, and a CPU convolution's sums
    # depend on how many threads split them.
    run, reference = tmp_path / "run", tmp_path / "reference"
    # The step schedule does not depend on max_iter (cosine, the shapes default, does).
    endless = {"solver.max_iter": 100000, "train.checkpoint_period": 100000, "solver.schedule": "step"}
    proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *train_argv(data_root, run, **endless)],
                            cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, stderr = _signal_when_training(proc, run / "metrics.jsonl")
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "SIGUSR1" in stderr and "--resume auto" in stderr
    [(stopped_at, path)] = ckpt.list_checkpoints(run)
    assert stopped_at >= 2 and ckpt.load_checkpoint(path)["iteration"] == stopped_at
    last = read_metrics(run / "metrics.jsonl")[-1]  # what a requeue script reads
    assert last["kind"] == "stop" and last["reason"] == "preempted"
    assert last["iteration"] == stopped_at and last["checkpoint"] == path.name

    end = {"solver.max_iter": stopped_at + 2, "solver.schedule": "step"}
    assert train_main()(train_argv(data_root, run, "--resume", "auto", **end)) == 0
    assert train_main()(train_argv(data_root, reference, **end)) == 0
    resumed, uninterrupted = train_losses(run), train_losses(reference)
    assert sorted(resumed) == list(range(1, stopped_at + 3))
    for iteration in (stopped_at + 1, stopped_at + 2):
        assert resumed[iteration] == pytest.approx(uninterrupted[iteration], rel=1e-6, abs=1e-7)


def test_the_preemption_signal_is_configurable_and_stops_after_the_iteration(data_root, tmp_path):
    cfg = tiny_cfg(data_root, **{"train.preempt_signal": "SIGUSR2", "solver.max_iter": 1000})
    trainer = Trainer.from_config(cfg, output_dir=tmp_path, device="cpu", progress=False)
    signal_during_iteration(trainer, signal.SIGUSR2, iteration=2)
    before = signal.getsignal(signal.SIGUSR2)
    try:
        trainer.train()
        assert trainer.iteration == 2 and trainer.stop_reason == "preempted"
        assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [2]
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN  # a repeat cannot kill the exit
    finally:
        signal.signal(signal.SIGUSR2, before)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(data_root, output, *extra_args, **overrides):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--master_port={_free_port()}", *TORCHRUN_SIGNAL_FLAGS, str(TRAIN_SCRIPT),
            *train_argv(data_root, output, *extra_args, **overrides)]


@pytest.mark.slow
def test_torchrun_of_the_sbatch_example_stops_on_sigusr1_and_resumes(data_root, tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    assert all(flag in readme for flag in TORCHRUN_SIGNAL_FLAGS)  # the same command line
    endless = {"solver.max_iter": 100000, "train.checkpoint_period": 100000}
    proc = subprocess.Popen(_torchrun(data_root, tmp_path, **endless), cwd=REPO_ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _signal_when_training(proc, tmp_path / "metrics.jsonl")
    [(stopped_at, _)] = ckpt.list_checkpoints(tmp_path)
    last = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert (last["kind"], last["reason"], last["iteration"]) == ("stop", "preempted", stopped_at)

    done = subprocess.run(_torchrun(data_root, tmp_path, "--resume", "auto",
                                    **{"solver.max_iter": stopped_at + 2}),
                          cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DDP: weights identical across 2 ranks" in done.stderr
    assert sorted(train_losses(tmp_path)) == list(range(1, stopped_at + 3))


# -------------------------------------------------------------------------- sync_bn
def test_sync_bn_on_cpu_processes_is_refused_before_they_connect(data_root, tmp_path, monkeypatch):
    """torch's SyncBatchNorm synchronises GPU tensors only (its forward raises for CPU inputs
    under an initialised process group), so gloo CPU processes cannot use it: the command
    refuses train.sync_bn there with one line, before the ranks connect."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape("train.sync_bn needs CUDA devices")):
        train_main()(train_argv(data_root, tmp_path / "run", **{"train.sync_bn": True}))
    assert not (tmp_path / "run").exists()
