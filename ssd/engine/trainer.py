"""The training loop: forward / backward / step, with checkpoints, evaluation and logs around it.

    trainer = Trainer.from_config(cfg, output_dir="runs/shapes", device="cpu")
    trainer.train()

`train_step` is one forward / backward / optimizer step (also used by the benchmarks).
`Trainer` runs it over ready-made parts (model, criterion, optimizer, scheduler, batches, test
set); `Trainer.from_config` builds the defaults from a config. Under torchrun each process trains
on its shard of every global batch with DistributedDataParallel; only rank 0 logs, evaluates and
writes checkpoints.
"""

from __future__ import annotations

import datetime
import logging
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ssd.batch_pictures import FIRST_BATCH_NAME, save_batch_picture
from ssd.data import (
    DataError,
    build_dataset,
    build_transform,
    make_train_loader,
    record_split,
    with_class_names,
)
from ssd.data.build import class_names_for
from ssd.data.image_cache import cached_image_size
from ssd.engine import checkpoint as ckpt
from ssd.engine.distributed import DistInfo, barrier, check_global_batch, ranks_agree
from ssd.engine.freeze import freeze_modules
from ssd.engine.inference import evaluate_model, make_eval_loader
from ssd.engine.metrics_log import MetricsLog, plot_metrics
from ssd.engine.run_lock import RunLock
from ssd.engine.solver import advance_schedule, build_optimizer, build_scheduler, set_schedule_iteration
from ssd.evaluation import coco_numbers
from ssd.evaluation.report import results_dictionary, write_evaluation_report
from ssd.fileio import atomic_torch_save, check_writable_folder, remove_stale_temporaries
from ssd.loss import build_loss
from ssd.modeling import build_model
from ssd.modeling.derived import resolve_priors
from ssd.modeling.registry import describe_derived_priors
from ssd.postprocess import build_postprocessor
from ssd.precision import (
    autocast_context,
    batch_image_dtype,
    enable_cudnn_autotune,
    precision_label,
    training_precision,
)
from ssd.progress import progress_bar, shows_bar, write_line
from ssd.weights import load_pretrained_backbone, load_training_weights

logger = logging.getLogger(__name__)

# Signals that stop training cleanly: finish the iteration, write a checkpoint, exit.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Loss spike warning: a loss above LOSS_SPIKE_FACTOR x its exponential moving average (weight
# LOSS_EMA_DECAY on the past) after LOSS_SPIKE_WARMUP_ITERS iterations is logged.
LOSS_SPIKE_FACTOR = 3.0
LOSS_EMA_DECAY = 0.9
LOSS_SPIKE_WARMUP_ITERS = 20


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


class OutputFolderError(ValueError):
    """A new run would mix with (and prune) another run's files in its output folder."""


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    targets: list[torch.Tensor],
    precision: str,
    channels_last: bool,
    clip_grad_norm: float | None = None,
) -> dict[str, torch.Tensor]:
    """One forward / loss / backward / optimizer step.

    Args:
        model: the detector (bare or DistributedDataParallel-wrapped), in train mode.
        criterion: MultiBoxLoss-like: (loc [B,P,4], conf [B,P,C], priors [P,4], targets) ->
            {"loss_loc", "loss_conf"}.
        scaler: a GradScaler (disabled: plain backward and step).
        images: [B, 3, S, S] float32, or float16 (data.batch_dtype); moved to the model's
            device as float32.
        targets: B tensors [n_i, 5] (xmin, ymin, xmax, ymax, label).
        precision: "fp32", "bf16" or "fp16" (autocast of the forward pass).
        channels_last: feed the images in channels_last memory format.
        clip_grad_norm: clip the global gradient norm to this (after unscaling); None/0: off.

    Returns:
        {"loss", "loss_loc", "loss_conf"}: detached scalar tensors.
    """
    bare = getattr(model, "module", model)
    device = next(bare.parameters()).device
    images = images.to(device, non_blocking=True).float()  # float16 batches: exact in float32
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = [t.to(device, non_blocking=True) for t in targets]
    with autocast_context(device, precision):
        loc, conf = model(images)
    losses = criterion(loc.float(), conf.float(), bare.priors, targets)
    loss = losses["loss_loc"] + losses["loss_conf"]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad_norm:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}


class LossSpikeMonitor:
    """Warns (logging) when the loss rises far above its exponential moving average.

    Args:
        factor: a loss above factor x EMA is a spike.
        decay: EMA weight of the past (ema = decay * ema + (1 - decay) * loss).
        warmup: iterations observed before spikes are reported (the early loss falls fast).
    """

    def __init__(self, factor: float = LOSS_SPIKE_FACTOR, decay: float = LOSS_EMA_DECAY,
                 warmup: int = LOSS_SPIKE_WARMUP_ITERS):
        self.factor, self.decay, self.warmup = factor, decay, warmup
        self.ema: float | None = None
        self.seen = 0

    def update(self, iteration: int, loss: float) -> bool:
        """Add the loss of `iteration`; True (and a warning) when it is a spike."""
        spike = self.seen >= self.warmup and self.ema is not None and loss > self.factor * self.ema
        if spike:
            logger.warning("Loss spike at iteration %d: %.4g is %.1fx its running mean %.4g; if it "
                           "keeps happening, lower solver.lr or set solver.clip_grad_norm",
                           iteration, loss, loss / self.ema, self.ema)
        self.ema = loss if self.ema is None else self.decay * self.ema + (1 - self.decay) * loss
        self.seen += 1
        return spike


class LogWindow:
    """The iterations since the window started (the previous periodic action): their losses,
    still on the device (read once, at the next log or check, so the loop never waits for the
    device), the data set indices of their batches, and where their wall time went.

    Attributes:
        start: perf_counter() when the window started.
        images: images trained on (all processes).
        data_wait: seconds spent waiting for the loader's next batch (host time).
        steps: (iteration, losses {"loss", "loss_loc", "loss_conf"} of scalar device tensors,
            data set indices [B]) of the iterations not yet checked for a finite loss.
    """

    def __init__(self):
        self.restart()
        self.steps: list[tuple[int, dict[str, torch.Tensor], torch.Tensor]] = []

    def restart(self) -> None:
        """Start timing a new window (unchecked steps are kept until they are checked)."""
        self.start, self.images, self.data_wait = time.perf_counter(), 0, 0.0

    def throughput(self) -> dict[str, float]:
        """{"images_per_second", "data_wait_s", "step_s", "data_wait_fraction"} of the window:
        step_s is the rest of the window's wall time (device work the loop waited for, the
        host's launch and bookkeeping)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"images_per_second": self.images / elapsed, "data_wait_s": self.data_wait,
                "step_s": elapsed - self.data_wait, "data_wait_fraction": self.data_wait / elapsed}

    def read_losses(self) -> list[tuple[int, dict[str, float], torch.Tensor]]:
        """The unchecked steps with their losses as floats (one device-to-host copy for all),
        in iteration order; they are then checked."""
        if not self.steps:
            return []
        names = list(self.steps[0][1])
        values = torch.stack([torch.stack([losses[name].float() for name in names])
                              for _, losses, _ in self.steps]).tolist()  # [steps, len(names)]
        read = [(iteration, dict(zip(names, row)), indices)
                for (iteration, _, indices), row in zip(self.steps, values)]
        self.steps = []
        return read


@dataclass(frozen=True)
class _RunClock:
    """When this `train()` call started (perf_counter seconds), from which iteration, to which:
    the ETA of the log lines."""

    started: float
    start_iteration: int
    max_iter: int


# Makes the training batches from a start iteration: (images [B,3,S,S], targets B x [n_i, 5],
# data set indices [B]) forever.
BatchSource = Callable[[int], Iterator[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]]]


class Trainer:
    """Iteration-based SSD training over ready-made parts (see `Trainer.from_config`).

    Args:
        cfg: the full config (ssd.config.Config): periods, max_iter, clip_grad_norm, and the
            snapshot stored in every checkpoint.
        model: the bare detector on `device` (wrapped in DistributedDataParallel here when
            `dist_info` has several processes).
        criterion, optimizer: the loss and the optimizer over the model's parameters.
        scheduler: a LambdaLR keyed on the iteration.
        batches: start iteration -> endless training batches (see `BatchSource`).
        output_dir: where checkpoints, metrics.jsonl and plots go.
        device: the model's device.
        precision: "fp32", "bf16" or "fp16" (fp16 uses a GradScaler).
        train_set: the training data set (its image_ids name the images of a bad batch).
        test_set: evaluated every train.eval_period iterations (None: no evaluation).
        scaler: default: enabled for fp16 only.
        dist_info: rank / world size when launched by torchrun.
        resume: a checkpoint path, "auto" (newest intact in output_dir, if any), or None.
        progress: show the tqdm bar.
        overwrite: start a new run in an output folder that holds another run's checkpoints,
            deleting them (and its metrics) first; without it such a folder is refused.
        run_lock: the output folder's lock, already taken (`Trainer.from_config`); default:
            taken here by rank 0. It is held until `train()` ends (also on errors and Ctrl-C) or
            `release_output_dir()`; while it is held, another run into the folder is refused.
    """

    def __init__(
        self,
        cfg,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        batches: BatchSource,
        output_dir: str | Path,
        device: torch.device | str,
        precision: str = "fp32",
        train_set=None,
        test_set=None,
        scaler: torch.amp.GradScaler | None = None,
        dist_info: DistInfo | None = None,
        resume: str | Path | None = None,
        progress: bool = True,
        overwrite: bool = False,
        run_lock: RunLock | None = None,
    ):
        self.cfg = cfg
        self.model, self.criterion = model, criterion
        self.optimizer, self.scheduler = optimizer, scheduler
        self.make_batches = batches
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.precision = precision
        self.train_set, self.test_set = train_set, test_set
        self.scaler = scaler or torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.dist = dist_info or DistInfo()
        self.progress = progress and self.dist.is_main
        self._stop_requested: str | bool = False  # the stop signal's name once requested
        self.iteration = 0
        self.best_map = -1.0
        self.score_threshold: float | None = None  # best-F1 score threshold of the last evaluation
        self.last_lr = optimizer.param_groups[0]["lr"]
        self.loss_monitor = LossSpikeMonitor()
        self._losses: dict[str, torch.Tensor] | None = None  # of the latest iteration
        self._window = LogWindow()
        self._result: dict[str, Any] = {}  # the latest log record and evaluation
        self._run_lock = run_lock
        self._hold_output_dir()  # before anything looks at or changes the folder
        try:
            self._prepare_output_dir(resume, overwrite)
            self.resumed_from = self._resume(resume)
            self.log = MetricsLog(self.output_dir, enabled=self.dist.is_main)
            if resume is not None:
                self.log.truncate_after(self.iteration)
            self.ddp_model = self._wrap_distributed(self.model)
            if cfg.train.compile:
                self.ddp_model = torch.compile(self.ddp_model)
        except BaseException:
            self.release_output_dir()
            raise
        enable_cudnn_autotune(self.device)

    @classmethod
    def from_config(
        cls,
        cfg,
        output_dir: str | Path | None = None,
        device: str | None = None,
        dist_info: DistInfo | None = None,
        resume: str | Path | None = None,
        init_weights: str | Path | None = None,
        progress: bool = True,
        overwrite: bool = False,
    ) -> Trainer:
        """The config's training run: its data sets, model, loss, optimizer and schedule.

        The output folder is locked first (rank 0; see `Trainer`'s run_lock), so that a second
        run into it is refused before any heavy work.

        Args:
            output_dir: default cfg.train.output_dir.
            device: "cpu", "cuda", "cuda:1", ... (default: cuda when available).
            init_weights: a weights file (checkpoint or classic state_dict) to start the whole
                model from; model.pretrained initialises only the backbone.
            the rest: as for `Trainer`.

        Raises:
            FolderInUseError: another live run holds the output folder (names it and its pid,
                host and start time).
        """
        dist = dist_info or DistInfo()
        output_dir = Path(output_dir or cfg.train.output_dir)
        run_lock = RunLock.acquire(output_dir) if dist.is_main else None
        try:
            return cls._assemble(cfg, output_dir, device, dist, resume, init_weights, progress,
                                 overwrite, run_lock)
        except BaseException:
            if run_lock is not None:
                run_lock.release()
            raise

    @classmethod
    def _assemble(cls, cfg, output_dir: Path, device: str | None, dist: DistInfo, resume,
                  init_weights, progress: bool, overwrite: bool,
                  run_lock: RunLock | None) -> Trainer:
        """`from_config` once the output folder is locked."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and dist.enabled:
            device = torch.device("cuda", dist.local_rank)
        _refuse_another_run(output_dir, resume, overwrite)  # before any heavy work
        if dist.is_main:  # only rank 0 writes there
            check_writable_folder(output_dir)
        batch_size = cfg.solver.batch_size
        check_global_batch(batch_size, dist.world_size)
        _seed_everything(cfg.train.seed)
        # Data first: a missing data set stops the run before any heavy work.
        cfg = record_split(cfg, output_dir, resume=resume is not None)
        train_set = build_dataset(cfg, train=True)
        cfg = with_class_names(cfg, train_set)  # checkpoints name the classes the files named
        train_transform = build_transform(cfg, train=True)
        if cfg.data.cache_images:
            _cache_training_images(train_set, train_transform, progress and dist.is_main)
        test_set = build_dataset(cfg, train=False) if cfg.train.eval_period > 0 else None
        precision = training_precision(cfg.train.amp, device)
        image_dtype = batch_image_dtype(cfg.data.batch_dtype, precision)

        def batches(start_iter: int):
            return iter(make_train_loader(
                train_set, train_transform, batch_size=batch_size // dist.world_size,
                num_workers=cfg.data.num_workers,
                pin_memory=cfg.data.pin_memory and device.type == "cuda",
                seed=cfg.train.seed, start_iter=start_iter, rank=dist.rank,
                world_size=dist.world_size, low_priority_workers=device.type == "cpu",
                image_dtype=image_dtype,
            ))

        model = _build_model(cfg, device, init_weights, class_names=train_set.class_names)
        if model.derived_prior_keys and dist.is_main:
            logger.info(describe_derived_priors(model))
        cfg = resolve_priors(cfg, model)  # checkpoints store the derived values
        solver = cfg.solver
        optimizer = build_optimizer(model, solver.lr, solver.momentum, solver.weight_decay,
                                    name=solver.optimizer)
        scheduler = build_scheduler(optimizer, solver.lr_steps, solver.gamma, solver.warmup_iters,
                                    solver.warmup_factor, schedule=solver.schedule,
                                    max_iter=solver.max_iter)
        return cls(cfg, model, build_loss(cfg), optimizer, scheduler, batches, output_dir, device,
                   precision=precision, train_set=train_set,
                   test_set=test_set, dist_info=dist, resume=resume, progress=progress,
                   overwrite=overwrite, run_lock=run_lock)

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # ----------------------------------------------------------------------------- output folder
    def _hold_output_dir(self) -> None:
        """Rank 0: take the output folder's lock unless it is held (again for a later `train()`).

        Raises:
            FolderInUseError: another live run holds it.
        """
        if self.dist.is_main and (self._run_lock is None or not self._run_lock.held):
            self._run_lock = RunLock.acquire(self.output_dir)

    def release_output_dir(self) -> None:
        """Let another run use the output folder: its run.lock is removed. `train()` does this
        when it ends; call it for a Trainer that is not trained. A later `train()` locks again."""
        if self._run_lock is not None:
            self._run_lock.release()

    # ----------------------------------------------------------------------------- resume
    def _prepare_output_dir(self, resume, overwrite: bool) -> None:
        """Refuse to start a new run over another run's files (or delete them with `overwrite`);
        remove the temp files a killed write left behind."""
        _refuse_another_run(self.output_dir, resume, overwrite)
        if not self.dist.is_main:
            return
        if overwrite:
            removed = ckpt.remove_run_files(self.output_dir)
            if removed:
                logger.info("--overwrite: deleted the previous run in %s: %s", self.output_dir,
                            ", ".join(p.name for p in removed))
        stale = remove_stale_temporaries(self.output_dir)
        if stale:
            logger.info("Removed %d temporary file(s) left by an interrupted write in %s: %s",
                        len(stale), self.output_dir, ", ".join(p.name for p in stale))

    def _resume(self, resume) -> Path | None:
        """Load the checkpoint to continue from; returns its path, or None for a fresh start.

        "auto" takes the newest intact checkpoint of the output folder: a damaged one (truncated,
        unreadable, another model) is skipped with a warning.
        """
        if resume is None:
            return None
        if str(resume) != "auto":
            self._load_training_state(Path(resume))
            return Path(resume)
        candidates = [path for _, path in reversed(ckpt.list_checkpoints(self.output_dir))]
        errors = []
        for path in candidates:
            try:
                self._load_training_state(path)
                return path
            except ckpt.CheckpointError as err:
                errors.append(err)
                if self.dist.is_main:
                    logger.warning("--resume auto: skipping a damaged checkpoint: %s", err)
        if errors:
            raise ckpt.CheckpointError(
                f"--resume auto: none of the {len(errors)} checkpoint(s) in {self.output_dir} can be "
                f"resumed from; the newest: {errors[0]}. Start a new run with --overwrite or in "
                f"another folder"
            )
        if self.dist.is_main:
            logger.info("--resume auto: no checkpoint in %s, starting from scratch", self.output_dir)
        return None

    def _load_training_state(self, path: Path) -> None:
        """Restore model, optimizer, schedule, scaler, RNG and iteration from `path`.

        Raises:
            CheckpointError: unreadable file, or a model / optimizer that does not fit this run
                (one line naming the file and the difference).
        """
        state = ckpt.load_checkpoint(path)
        problem = ckpt.architecture_mismatch(self.model, state["model"])
        if problem:
            raise ckpt.CheckpointError(
                f"cannot resume from {path}: it holds a {ckpt.describe_model_config(state.get('config'))} "
                f"model, this run's config builds {ckpt.describe_model_config(self.cfg.to_dict())} "
                f"({problem}); resume with the config it was trained with, or start a new run"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state.get("rng"))
            self.iteration = int(state["iteration"])
            self.best_map = float(state.get("best_map", -1.0))
            self.score_threshold = state.get("score_threshold")
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise ckpt.CheckpointError(
                f"cannot resume from {path}: its training state does not fit this run "
                f"({type(err).__name__}: {' '.join(str(err).split())})"
            ) from err
        if self.dist.is_main:
            logger.info("Resumed from %s at iteration %d (lr %.6g)", path, self.iteration,
                        self.optimizer.param_groups[0]["lr"])

    def training_state(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it is."""
        return {
            "model": self.model.state_dict(),
            "config": self.cfg.to_dict(),
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": _get_rng_state(),
            "best_map": self.best_map,
            "score_threshold": self.score_threshold,
        }

    def save_checkpoint(self) -> Path | None:
        """Write model_<iteration>.pth atomically and keep the newest train.keep_checkpoints."""
        if not self.dist.is_main:
            return None
        path = atomic_torch_save(self.training_state(),
                                ckpt.checkpoint_path(self.output_dir, self.iteration))
        ckpt.prune_checkpoints(self.output_dir, self.cfg.train.keep_checkpoints)
        return path

    # ----------------------------------------------------------------------------- loop
    def train_step(self, images: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One iteration's step (see `train_step`); then the lr of the next iteration is set.
        images [B,3,S,S]; targets B x [n_i, 5]."""
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the LR this step uses
        losses = train_step(self.ddp_model, self.criterion, self.optimizer, self.scaler, images, targets,
                            self.precision, self.cfg.train.channels_last, self.cfg.solver.clip_grad_norm)
        if self.scaler.is_enabled():
            # GradScaler skips the step when gradients overflowed, and only the device knows
            # (get_scale() would wait for it every step). The lr is the schedule's value at the
            # iteration either way, so it is set without stepping the scheduler.
            set_schedule_iteration(self.scheduler, self.iteration + 1)
        else:
            advance_schedule(self.scheduler, self.iteration + 1, optimizer_stepped=True)
        return losses

    def periodic_actions(self) -> list[tuple[int, Callable[[], Any]]]:
        """(period, action), in the order they run after every iteration that is a multiple of
        the period (0: never); at the end of training each one that did not just run runs once."""
        train = self.cfg.train
        return [(train.log_period, self._log_step),
                (train.checkpoint_period, self.save_checkpoint),
                (train.eval_period, self.evaluate)]

    def train(self, max_iter: int | None = None) -> dict[str, Any]:
        """Run until `max_iter` (default solver.max_iter); returns the last logged losses and
        evaluation. Ctrl-C / SIGTERM write a checkpoint and raise KeyboardInterrupt.
        The output folder stays locked until it returns or raises."""
        self._hold_output_dir()
        try:
            return self._train(max_iter)
        finally:
            self.release_output_dir()

    def _train(self, max_iter: int | None) -> dict[str, Any]:
        max_iter = self.cfg.solver.max_iter if max_iter is None else max_iter
        if self.dist.is_main:
            logger.info(self._summary(max_iter))
        batches = self.make_batches(self.iteration)
        self._bar = progress_bar(total=max_iter, initial=self.iteration, desc="train", unit="it",
                                 enabled=self.progress, plain_lines=False)
        # Without a bar on a terminal (--no-progress, stderr redirected) each log period is a line.
        self._log_lines = self.dist.is_main and not shows_bar(self.progress)
        self._clock = _RunClock(time.perf_counter(), self.iteration, max_iter)
        self._window.restart()
        actions = self.periodic_actions()
        previous_handlers = self._install_stop_handlers()
        try:
            while self.iteration < max_iter and not self._stop_requested:
                waited_from = time.perf_counter()
                images, targets, indices = self._next_batch(batches)
                self._window.data_wait += time.perf_counter() - waited_from
                if self.iteration == 0 and self.dist.is_main:
                    self.draw_first_batch(images, targets)
                self._losses = self.train_step(images, targets)
                self.iteration += 1
                self._window.steps.append((self.iteration, self._losses, indices))
                self._window.images += images.shape[0] * self.dist.world_size
                self._bar.update(1)
                due = [action for period, action in actions if period and self.iteration % period == 0]
                if due:
                    self.check_losses()  # before anything reads or saves this state
                    for action in due:
                        action()
                    self._window.restart()  # the actions' own time is not the loop's
        finally:
            self._bar.close()
            _restore_handlers(previous_handlers)
        if self._stop_requested:
            self.check_losses()
            path = self.save_checkpoint()
            raise KeyboardInterrupt(
                f"Interrupted ({self._stop_requested}) at iteration {self.iteration}; checkpoint "
                f"written to {path}. Continue with --resume auto (or --resume {path})."
            )
        return self._finish(actions)

    def _finish(self, actions) -> dict[str, Any]:
        """The actions whose period did not end at the last iteration, the DDP weight check,
        the metrics plot."""
        self.check_losses()
        if self.iteration > 0 and self._losses is not None:
            for period, action in actions:
                if period and self.iteration % period != 0:
                    action()
        if self.dist.enabled:
            agree, sums = ranks_agree(self.model, self.dist)
            if self.dist.is_main:
                logger.info("DDP: weights %s across %d ranks (checksums %s)",
                            "identical" if agree else "DIFFERENT", self.dist.world_size,
                            ", ".join(f"{s:.10e}" for s in sums))
            self._result["ranks_agree"] = agree
        if self.dist.is_main and self.log.path.is_file():
            plot_metrics(self.log.path, self.output_dir / "metrics.png")
        self.log.close()
        return self._result

    def _next_batch(self, batches):
        """The next training batch; a bad image (read here or in a loader worker) saves the last
        finished iteration and stops with a DataError naming the file."""
        try:
            return next(batches)
        except DataError as err:
            self.check_losses()
            saved = self.save_checkpoint() if self.iteration > 0 else None
            state = (f"iteration {self.iteration} is saved in {saved}; continue with --resume auto"
                     if saved else "no iteration had finished, nothing was saved")
            raise DataError(f"{_worker_error_message(err)} (training stopped: {state})",
                            err.reason, err.path) from None

    def draw_first_batch(self, images: torch.Tensor, targets: list[torch.Tensor]) -> Path:
        """Draw the run's first augmented batch (images [B, 3, S, S], targets B x [n, 5]) as the
        model sees it into <output>/train_batch0.jpg (see ssd.batch_pictures)."""
        class_names = getattr(self.train_set, "class_names", None) or self.cfg.data.class_names or []
        return save_batch_picture(images, targets, list(class_names), self.cfg.data.mean,
                                  self.output_dir / FIRST_BATCH_NAME)

    def check_losses(self) -> None:
        """Read the losses of the iterations since the last check (one wait for the device),
        feed them to the loss-spike monitor, and stop at the first non-finite one.

        Raises:
            TrainingError: naming that iteration, its losses and its batch's images (the later
                iterations of the window trained on non-finite weights; nothing was saved).
        """
        for iteration, losses, indices in self._window.read_losses():
            if not all(np.isfinite(value) for value in losses.values()):
                self._raise_non_finite(iteration, losses, indices)
            self.loss_monitor.update(iteration, losses["loss"])

    def _raise_non_finite(self, iteration: int, losses: dict[str, float], indices: torch.Tensor):
        ids = [self.train_set.image_ids[i] if self.train_set is not None else f"#{i}"
               for i in indices.tolist()]
        values = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        newest = ckpt.newest_checkpoint(self.output_dir) if self.dist.is_main else None
        saved = (f"The newest checkpoint, {newest}, is unchanged" if newest is not None
                 else f"No checkpoint was written to {self.output_dir} yet")
        raise TrainingError(
            f"Non-finite loss at iteration {iteration} ({values}); batch images: "
            f"{', '.join(map(str, ids))}. {saved}; try a lower solver.lr or "
            f"solver.clip_grad_norm, or check these images' annotations."
        )

    def _log_step(self) -> None:
        """Write the latest losses, the lr, and the window's images/s split into the time spent
        waiting for data and the rest (the steps); shown on the bar, else logged as a line."""
        timing = self._window.throughput()
        record = {"kind": "train", "iteration": self.iteration,
                  **{k: round(v.item(), 6) for k, v in self._losses.items()},
                  "lr": self.last_lr,
                  "images_per_second": round(timing["images_per_second"], 2),
                  "data_wait_s": round(timing["data_wait_s"], 4),
                  "step_s": round(timing["step_s"], 4),
                  "data_wait_fraction": round(timing["data_wait_fraction"], 4)}
        if self._log_lines:
            logger.info(self._log_line(record))
        else:
            self._bar.set_postfix(loss_loc=f"{record['loss_loc']:.3f}",
                                  loss_conf=f"{record['loss_conf']:.3f}", lr=f"{record['lr']:.2e}",
                                  img_s=f"{timing['images_per_second']:.1f}",
                                  data_wait=f"{100 * timing['data_wait_fraction']:.0f}%")
        self.log.write(record)
        self._result.update(record)

    def _log_line(self, record: dict[str, Any]) -> str:
        """One plain log line: iteration, losses, lr, images/s, data wait and ETA."""
        clock = self._clock
        done = self.iteration - clock.start_iteration
        elapsed = time.perf_counter() - clock.started
        remaining = (clock.max_iter - self.iteration) * elapsed / done if done > 0 else 0.0
        eta = datetime.timedelta(seconds=round(max(remaining, 0.0)))
        return (f"iteration {self.iteration}/{clock.max_iter}  loss {record['loss']:.4f} "
                f"(loc {record['loss_loc']:.4f}, conf {record['loss_conf']:.4f})  "
                f"lr {record['lr']:.2e}  {record['images_per_second']:.1f} images/s "
                f"(data wait {100 * record['data_wait_fraction']:.0f}%)  ETA {eta}")

    def evaluate(self) -> dict[str, Any] | None:
        """VOC07 (or the configured metric) on the test split; rank 0 only. Logs the mAP, keeps
        best.pth, writes results.json and the pictures into <output>/eval/ (replaced by each
        evaluation), and keeps the best-F1 score threshold for the checkpoints."""
        if not self.dist.is_main or self.test_set is None:
            barrier(self.dist)
            return None
        loader = make_eval_loader(self.test_set, build_transform(self.cfg, train=False),
                                  batch_size=self.cfg.test.batch_size,
                                  num_workers=self.cfg.data.num_workers)
        self.model.eval()
        result = evaluate_model(self.model, self.test_set, loader, self.device,
                                build_postprocessor(self.cfg), self.cfg.test.metric,
                                precision="fp32", progress=self.progress)
        self.model.train()
        record = {"kind": "eval", "iteration": self.iteration, "mAP": result["mAP"],
                  "metric": self.cfg.test.metric, "ap": result.get("ap", {})}
        if "coco" in result:  # AP, AP50, AP75, APs, APm, APl and the ARs
            record["coco"] = coco_numbers(result["coco"])
        self.log.write(record)
        write_line(f"[iteration {self.iteration}] {self.cfg.test.metric} mAP = {result['mAP']:.4f}")
        self.score_threshold = result["analysis"]["best_f1"]["threshold"]
        write_evaluation_report(self.output_dir / ckpt.EVAL_DIR, result,
                                results_dictionary(result, metric=self.cfg.test.metric,
                                                   iteration=self.iteration))
        if result["mAP"] > self.best_map:
            self.best_map = result["mAP"]
            atomic_torch_save(self.training_state(), self.output_dir / ckpt.BEST_NAME)
        self._result["eval"] = record
        barrier(self.dist)
        return record

    def _install_stop_handlers(self) -> dict:
        """Ctrl-C and SIGTERM: finish the iteration and write a checkpoint (a second Ctrl-C
        aborts without saving). Returns the previous handlers."""
        def request_stop(signum, frame):
            name = signal.Signals(signum).name
            if self._stop_requested:  # second signal: stop now
                raise KeyboardInterrupt(f"{name} again: stopped without saving")
            self._stop_requested = name
            write_line(f"{name}: finishing this iteration and writing a checkpoint "
                       "(press Ctrl-C again to abort without saving)")

        previous = {}
        for stop_signal in STOP_SIGNALS:
            try:
                previous[stop_signal] = signal.signal(stop_signal, request_stop)
            except ValueError:  # not in the main thread: signals stay as they are
                pass
        return previous

    def _summary(self, max_iter: int) -> str:
        cfg = self.cfg
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"Training {cfg.model.backbone} SSD{cfg.model.image_size} ({params:,} parameters, "
            f"{self.model.priors.shape[0]} priors, {cfg.model.num_classes} classes) on "
            f"{self.device}{f' x{self.dist.world_size} processes' if self.dist.enabled else ''} "
            f"({precision_label(self.precision)}): "
            f"{len(self.train_set) if self.train_set is not None else '?'} training images, "
            f"batch {cfg.solver.batch_size} "
            f"({str(batch_image_dtype(cfg.data.batch_dtype, self.precision)).removeprefix('torch.')} "
            f"images), "
            f"iterations {self.iteration} -> {max_iter}, output {self.output_dir}"
        )


def _refuse_another_run(output_dir: Path, resume, overwrite: bool) -> None:
    """OutputFolderError when a new run (not resuming from this folder, no `overwrite`) would
    share `output_dir` with another run's checkpoints or metrics."""
    if overwrite and resume is not None:
        raise OutputFolderError("overwrite starts a new run; it cannot be combined with resume")
    resumes_here = resume is not None and (
        str(resume) == "auto" or Path(resume).resolve().parent == output_dir.resolve())
    existing = [] if resumes_here or overwrite else ckpt.run_files(output_dir)
    if existing:
        raise OutputFolderError(
            f"{output_dir} holds another run ({', '.join(p.name for p in existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}); a new run there would mix with and "
            f"prune its files. Continue it with --resume auto, choose a new folder with "
            f"--output, or delete it and start over with --overwrite"
        )


def _cache_training_images(train_set, transform, progress: bool) -> None:
    """`data.cache_images`: decode the training images into memory before the workers start
    (every DDP process holds its own copy), already resized to the input size when `transform`
    only resizes and mirrors (the same batches from a fraction of the memory)."""
    start = time.perf_counter()
    size = cached_image_size(transform)
    held = train_set.cache_images(progress=progress, size=size)
    logger.info("data.cache_images: %d training images decoded into memory%s (%.2f GiB) in %.1f s",
                len(train_set), f", resized to {size} px" if size else "", held / 2**30,
                time.perf_counter() - start)


def _build_model(cfg, device: torch.device, init_weights, class_names=None) -> nn.Module:
    """The config's detector on `device`, from `init_weights`, the ImageNet backbone of
    model.pretrained, or from scratch; then model.freeze.

    Weights trained on other classes than `class_names` (the training set's, default the
    config's) are fine-tuned to them (`ssd.weights.load_training_weights`).
    """
    model = build_model(cfg)
    if init_weights is not None:
        if class_names is None or len(class_names) != cfg.model.num_classes - 1:
            class_names = class_names_for(cfg)
        class_map = cfg.model.class_map.to_dict() if cfg.model.class_map is not None else None
        load_training_weights(model, init_weights, class_names, class_map)
    elif cfg.model.pretrained:
        load_pretrained_backbone(model, cfg.model.pretrained)
    freeze_modules(model, cfg.model.freeze)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _restore_handlers(previous: dict) -> None:
    for stop_signal, handler in previous.items():
        signal.signal(stop_signal, handler)


def _worker_error_message(error: Exception) -> str:
    """The original message of an error re-raised from a DataLoader worker.

    torch re-raises a worker's exception as the same class with the message "Caught DataError
    in DataLoader worker process 0. Original Traceback ...: ssd.data.common.DataError: <message>";
    the last line carries the original message.
    """
    text = str(error)
    if "DataLoader worker" not in text:
        return text
    last_line = text.strip().splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last_line[len(prefix):] if last_line.startswith(prefix) else last_line


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _get_rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) generator states as plain data: tensors, ints, floats
    and tuples, so a checkpoint loads without unpickling objects."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, float | None)
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),  # [624]
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any] | None) -> None:
    """Restore `_get_rng_state()`'s result; older checkpoints hold numpy's own state tuple."""
    if not state:
        return
    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                       numpy_state["position"], numpy_state["has_gauss"],
                       numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state) -> tuple:
    """random.setstate wants tuples; a state that went through lists becomes tuples again."""
    version, internal, gauss_next = state
    return version, tuple(internal), gauss_next
