"""Trainer: learning, exact resume, atomic checkpoints, non-finite loss, SIGINT, DDP, CLI errors."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEVICES, needs_cuda
from trainer_helpers import (
    REPO_ROOT,
    signal_during_iteration,
    tiny_cfg,
    tiny_overrides,
    train_argv,
    train_main,
)
from trainer_helpers import TRAIN_SCRIPT as TRAIN_SCRIPT_PATH

from ssd.engine import checkpoint as ckpt
from ssd.engine.metrics_log import read_metrics
from ssd.engine.run_lock import LOCK_NAME
from ssd.engine.trainer import Trainer, TrainingError
from ssd.fileio import atomic_torch_save

TRAIN_SCRIPT = str(TRAIN_SCRIPT_PATH)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def train_losses(output_dir):
    return {r["iteration"]: (r["loss_loc"], r["loss_conf"])
            for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"}


@pytest.mark.parametrize("device", DEVICES)
def test_overfits_a_fixed_batch(data_root, tmp_path, device):
    trainer = Trainer.from_config(tiny_cfg(data_root, **{"solver.lr": 0.01}), output_dir=tmp_path,
                                  device=device, progress=False)
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
    atomic_torch_save({"model": {"w": torch.ones(3)}, "iteration": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, stream, *args, **kwargs):
        stream.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"model": {"w": torch.zeros(3)}, "iteration": 2}, path)
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
    signal_during_iteration(trainer, signal.SIGTERM, iteration=2)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=r"SIGTERM.*iteration 2.*--resume auto"):
        trainer.train()
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [2]
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 2))["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) is before


def _corrupt_second_batch_image(data_root: Path) -> Path:
    """Generate the tiny shapes set and corrupt an image of the second training batch."""
    from ssd.data import build_dataset
    from ssd.data.loader import InfiniteSampler

    cfg = tiny_cfg(data_root)
    train_set = build_dataset(cfg, train=True)
    order = InfiniteSampler(len(train_set), seed=cfg.train.seed).epoch_indices(0)
    bad = Path(train_set.records[order[cfg.solver.batch_size + 1]].image_path)
    bad.write_bytes(b"\x00garbage, not a JPEG" * 10)
    return bad


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_stops_with_its_name_and_saves_the_last_iteration(tmp_path, capsys, workers):
    data_root, output = tmp_path / "data", tmp_path / "run"
    bad = _corrupt_second_batch_image(data_root)
    code = train_main()(train_argv(data_root, output, **{"data.num_workers": workers,
                                                         "data.cache_images": False}))
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last_line.startswith("error: Cannot decode image") and str(bad) in last_line
    assert "data.skip_bad=true" in last_line and "DataLoader worker" not in last_line
    assert "iteration 1 is saved" in last_line
    assert [it for it, _ in ckpt.list_checkpoints(output)] == [1]


def test_corrupt_image_with_cached_images_stops_before_training(tmp_path, capsys):
    data_root, output = tmp_path / "data", tmp_path / "run"
    bad = _corrupt_second_batch_image(data_root)
    code = train_main()(train_argv(data_root, output, **{"data.cache_images": True}))
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last_line.startswith("error: Cannot decode image") and str(bad) in last_line
    assert "data.skip_bad=true" in last_line
    assert ckpt.list_checkpoints(output) == []


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
    assert not (tmp_path / LOCK_NAME).exists()  # released on Ctrl-C


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
    assert not (tmp_path / LOCK_NAME).exists()  # rank 0 took it and released it
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


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_loss_inside_a_log_window_names_its_own_iteration_and_batch(data_root, tmp_path,
                                                                               device):
    from ssd.data.loader import InfiniteSampler

    cfg = tiny_cfg(data_root, **{"train.log_period": 4, "train.checkpoint_period": 100})
    trainer = Trainer.from_config(cfg, output_dir=tmp_path, device=device, progress=False)
    real, calls = trainer.criterion.forward, []

    def poisoned_second_iteration(loc, conf, priors, targets):
        calls.append(1)
        losses = real(loc, conf, priors, targets)
        if len(calls) == 2:
            losses["loss_conf"] = losses["loss_conf"] * float("inf")
        return losses

    trainer.criterion.forward = poisoned_second_iteration
    with pytest.raises(TrainingError) as err:
        trainer.train()
    message = str(err.value)
    assert "Non-finite loss at iteration 2 " in message
    batch = cfg.solver.batch_size
    order = InfiniteSampler(len(trainer.train_set), seed=cfg.train.seed).epoch_indices(0)
    ids = trainer.train_set.image_ids
    second = [ids[i] for i in order[batch:2 * batch]]
    others = [ids[i] for i in order[:batch] + order[2 * batch:4 * batch]]
    assert f"batch images: {', '.join(second)}." in message
    assert not any(image_id in message for image_id in others)
    assert len(calls) == 4  # found at the log of iteration 4, the first host read
    assert ckpt.list_checkpoints(tmp_path) == []


@pytest.mark.parametrize("device", DEVICES)
def test_the_loop_reads_the_device_only_at_log_iterations(data_root, tmp_path, monkeypatch, device):
    """Host reads of tensors (item, tolist, bool) from the trainer happen only when a periodic
    action is due, never per step: on CUDA each one would wait for the device."""
    import ssd.engine.hooks as hooks_module
    import ssd.engine.trainer as trainer_module

    cfg = tiny_cfg(data_root, **{"train.log_period": 3, "train.checkpoint_period": 6})
    trainer = Trainer.from_config(cfg, output_dir=tmp_path, device=device, progress=False)
    reads = []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__")
            if caller in (trainer_module.__name__, hooks_module.__name__):
                reads.append(trainer.iteration)
            return original(self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    trainer.train()
    assert reads and set(reads) <= {3, 6}


def test_log_records_split_the_window_into_data_wait_and_step(data_root, tmp_path):
    cfg = tiny_cfg(data_root, **{"train.log_period": 2, "train.checkpoint_period": 100})
    Trainer.from_config(cfg, output_dir=tmp_path, device="cpu", progress=False).train()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["iteration"] for r in records] == [2, 4, 6]
    for record in records:
        assert record["data_wait_s"] > 0 and record["step_s"] > 0  # loading in this process
        window = record["data_wait_s"] + record["step_s"]
        # the record rounds seconds to 1e-4 (so `window` is off by up to 2e-4 s), the fraction
        # to 1e-4 and images/s to 0.01
        seconds_error = 2e-4 / window
        assert record["data_wait_fraction"] == pytest.approx(record["data_wait_s"] / window,
                                                             abs=seconds_error + 1e-4)
        assert record["images_per_second"] == pytest.approx(2 * cfg.solver.batch_size / window,
                                                            rel=2 * seconds_error, abs=0.006)


@needs_cuda
def test_cuda_run_in_fp16_channels_last_from_pinned_loader_workers(data_root, tmp_path):
    """The CUDA training path as configs/shapes300.yaml runs it: fp16 autocast with a gradient
    scaler, channels_last, 2 loader workers into pinned memory, cuDNN autotuning."""
    cfg = tiny_cfg(data_root, **{"train.amp": True, "train.channels_last": True,
                                 "data.num_workers": 2, "data.pin_memory": True})
    trainer = Trainer.from_config(cfg, output_dir=tmp_path, device="cuda", progress=False)
    assert trainer.precision == "fp16" and trainer.scaler.is_enabled()
    assert torch.backends.cudnn.benchmark
    images, _, _ = next(trainer.make_batches(0))
    assert images.is_pinned() and images.dtype == torch.float16  # data.batch_dtype auto
    trainer.train()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["iteration"] for r in records] == list(range(1, cfg.solver.max_iter + 1))
    assert all(math.isfinite(r["loss_loc"]) and math.isfinite(r["loss_conf"]) for r in records)
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [3, 6]
    weights = torch.load(ckpt.checkpoint_path(tmp_path, 6), map_location="cpu")["model"]
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())


def test_batches_travel_in_float16_only_for_a_float16_step():
    from ssd.precision import batch_image_dtype

    assert batch_image_dtype("auto", "fp16") == torch.float16
    assert batch_image_dtype("auto", "bf16") == batch_image_dtype("auto", "fp32") == torch.float32
    assert batch_image_dtype("float32", "fp16") == torch.float32
    assert batch_image_dtype("float16", "fp32") == torch.float16


def test_a_float16_batch_trains_as_its_float32_values(data_root, tmp_path):
    """train_step turns float16 images into float32 on the device: the same step as the
    float32 batch holding the same (float16-rounded) values."""
    losses = {}
    for dtype in (torch.float16, torch.float32):
        trainer = Trainer.from_config(tiny_cfg(data_root, **{"train.amp": False}),
                                      output_dir=tmp_path / str(dtype), device="cpu", progress=False)
        images, targets, _ = next(trainer.make_batches(0))
        images = images.half().to(dtype)
        losses[dtype] = [trainer.train_step(images, targets)["loss"].item() for _ in range(2)]
    assert losses[torch.float16] == losses[torch.float32]


@needs_cuda
@pytest.mark.parametrize("backbone", ["vgg16", "ssd7"])
def test_float16_autocast_gives_float16_batches_the_float32_batches_results(backbone, monkeypatch):
    """Under float16 autocast the first layer, a convolution, rounds its float32 input to
    float16; a batch already rounded (data.batch_dtype auto on CUDA) gives the same outputs
    bit for bit (deterministic cuDNN algorithms, so both calls run the same kernels)."""
    from ssd.config import load_config
    from ssd.modeling import build_model
    from ssd.precision import autocast_context

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    config = {"vgg16": None, "ssd7": REPO_ROOT / "configs" / "shapes.yaml"}[backbone]
    cfg = load_config(config, overrides=["model.pretrained=null"])
    torch.manual_seed(0)
    model = build_model(cfg).cuda().eval()
    size = cfg.model.image_size
    images = 60 * torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for name, batch in (("float32", images), ("float16", images.half())):
        with torch.no_grad(), autocast_context(torch.device("cuda"), "fp16"):
            outputs[name] = model(batch.cuda().float())
    for got, expected in zip(outputs["float16"], outputs["float32"]):
        assert torch.equal(got, expected)


def test_cudnn_autotune_only_on_cuda(monkeypatch):
    from ssd.precision import enable_cudnn_autotune

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    enable_cudnn_autotune(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    enable_cudnn_autotune("cuda")  # setting the flag needs no GPU
    assert torch.backends.cudnn.benchmark is True


@pytest.fixture(scope="module")
def compile_backend():
    """The torch.compile backend this platform can run: inductor when it compiles here (it needs
    a C++ compiler on CPU), else aot_eager (the same graph capture and autograd tracing, run
    by eager kernels); skips when torch.compile cannot run at all."""
    def probe(x):
        return torch.relu(x) * 2

    for backend in ("inductor", "aot_eager"):
        try:
            torch._dynamo.reset()
            torch.compile(probe, backend=backend)(torch.randn(4))
            return backend
        except Exception:  # noqa: BLE001  (any failure means this backend is unusable here)
            continue
    pytest.skip("torch.compile cannot compile on this platform (no backend works)")


def _tiny_ssd7_overrides(data_root):
    return {"model.image_size": 64, "model.channels": [8, 8, 8, 8, 8, 8, 8],
            "model.priors.feature_maps": [8, 4, 2, 1]}


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_predictor_network_matches_eager(data_root, compile_backend, monkeypatch, device):
    from ssd.modeling import build_model
    from ssd.predictor import Predictor

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend=compile_backend))
    # float32 convolutions on CUDA: no TF32 (10-bit mantissa inputs), which would need its own bound
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cfg = tiny_cfg(data_root, **_tiny_ssd7_overrides(data_root))
    torch.manual_seed(0)
    model = build_model(cfg)
    predictor = Predictor(model, config=cfg, device=device, precision="fp32", compile=True)
    assert predictor.network is not predictor.model
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        compiled, eager = predictor.network(images), predictor.model(images)
    for fast, reference in zip(compiled, eager):
        # float32 kernels may sum in another order: a few ulps of the activations' scale
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_train_compile_gives_the_eager_losses(data_root, tmp_path, compile_backend, monkeypatch):
    # aot_eager: the graph capture and the traced forward/backward, without inductor's code
    # generation (which the predictor test checks; compiling a backward with it takes a minute)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="aot_eager"))
    losses = {}
    for compiled in (False, True):
        # float32 and SGD: updates proportional to the gradients, so rounding stays rounding
        cfg = tiny_cfg(data_root, **_tiny_ssd7_overrides(data_root), **{
            "train.compile": compiled, "train.amp": False, "solver.optimizer": "sgd"})
        trainer = Trainer.from_config(cfg, output_dir=tmp_path / str(compiled), device="cpu",
                                      progress=False)
        assert (trainer.ddp_model is not trainer.model) == compiled
        images, targets, _ = next(trainer.make_batches(0))
        losses[compiled] = [trainer.train_step(images, targets)["loss"].item() for _ in range(3)]
    # Three steps: the compiled gradients update the weights as eager ones do.
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
