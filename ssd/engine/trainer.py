"""The training loop: forward / backward / step, with hooks around it.

    trainer = Trainer.from_config(cfg, output_dir="runs/shapes", device="cpu", hooks=[MyHook()])
    trainer.train()

`train_step` is one forward / backward / optimizer step (also used by the benchmarks).
`Trainer` runs it over ready-made parts (model, criterion, optimizer, scheduler, batches) and
calls its hooks (ssd.engine.hooks) around every iteration; logging, checkpoints, evaluation,
the loss checks and the lr schedule are hooks. `Trainer.from_config` builds the config's parts
and hooks (ssd.engine.build). Under torchrun each process trains on its shard of every global
batch with DistributedDataParallel; only rank 0 logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ssd.engine import checkpoint as ckpt
from ssd.engine.distributed import DistInfo
from ssd.engine.hooks import HookBase, LossSpikeMonitor, TrainingError, TrainingInterrupted
from ssd.engine.output_dir import OutputFolder, OutputFolderError
from ssd.engine.rng import get_rng_state, set_rng_state
from ssd.fileio import atomic_torch_save
from ssd.precision import autocast_context, enable_cudnn_autotune

logger = logging.getLogger(__name__)

# Importable from here as before the hooks had their own module.
__all__ = ["BatchSource", "LossSpikeMonitor", "OutputFolderError", "Trainer", "TrainingError",
           "TrainingInterrupted", "train_step"]


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


# A training batch: (images [B,3,S,S], targets B x [n_i, 5], data set indices [B]).
Batch = tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]
# Makes the endless training batches from a start iteration (exact resume), or an iterable of
# batches (e.g. a list) repeated from its start.
BatchSource = Callable[[int], Iterator[Batch]] | Iterable[Batch]


class Trainer:
    """Iteration-based SSD training over ready-made parts (see `Trainer.from_config`).

    Args:
        model: the bare detector on `device` (wrapped in DistributedDataParallel here when
            `dist_info` has several processes): images [B,3,S,S] -> loc [B,P,4], conf [B,P,C];
            has `priors` [P,4].
        criterion, optimizer: the loss (see `train_step`) and the optimizer over the model.
        scheduler: an LR scheduler keyed on the iteration (stepped by the `LRSchedule` hook).
        batches: the training batches (see `BatchSource`).
        hooks: called around training and every iteration, in this order (ssd.engine.hooks).
        max_iter: the iteration `train()` ends at by default.
        device, precision: the model's device; "fp32", "bf16" or "fp16" (autocast).
        scaler: default: enabled for fp16 only.
        channels_last, clip_grad_norm: see `train_step`.
        compile: run the step through torch.compile.
        dist_info: rank / world size when launched by torchrun.
        output: the output folder (checkpoints; locked while training); None: nothing is saved.
        resume: a checkpoint path, "auto" (newest intact in `output`, if any), or None.
        config: the config as a plain dict, stored in every checkpoint.
        train_set: the data set of `batches` (not read here; for hooks and callers).
        progress: show progress bars (rank 0).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, batches: BatchSource, hooks: Sequence[HookBase] = (), *,
                 max_iter: int, device: torch.device | str = "cpu", precision: str = "fp32",
                 scaler: torch.amp.GradScaler | None = None, channels_last: bool = False,
                 clip_grad_norm: float | None = None, compile: bool = False,
                 dist_info: DistInfo | None = None, output: OutputFolder | None = None,
                 resume: str | Path | None = None, config: dict[str, Any] | None = None,
                 train_set=None, progress: bool = True):
        self.model, self.criterion = model, criterion
        self.optimizer, self.scheduler = optimizer, scheduler
        self.make_batches = batches if callable(batches) else _repeating(batches)
        self.max_iter = max_iter
        self.device = torch.device(device)
        self.precision = precision
        self.scaler = scaler or torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.channels_last, self.clip_grad_norm = channels_last, clip_grad_norm
        self.dist = dist_info or DistInfo()
        self.output, self.config, self.train_set = output, config, train_set
        self.progress = progress and self.dist.is_main
        self.iteration = 0
        self.best_map = -1.0
        self.score_threshold: float | None = None  # best-F1 score threshold of the last evaluation
        self.losses: dict[str, torch.Tensor] | None = None  # of the latest iteration
        self.batch: Batch | None = None  # the latest iteration's batch
        self.batch_indices: torch.Tensor | None = None  # [B] data set indices of its batch
        self.batch_images = 0  # images of its batch (all processes)
        self.data_wait_s = 0.0  # seconds it waited for its batch
        self.hook_seconds = 0.0  # spent in hooks' before_step / after_step so far
        self._round_start: float | None = None
        self.error: BaseException | None = None  # what ended the latest train()
        self.stop_reason: str | None = None
        self.result: dict[str, Any] = {}  # the latest log record and evaluation
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.trainer = self
        self.resumed_from = self._resume(resume)  # the hooks' state too
        self.ddp_model = self._wrap_distributed(self.model)
        if compile:
            self.ddp_model = torch.compile(self.ddp_model)
        enable_cudnn_autotune(self.device)

    @classmethod
    def from_config(cls, cfg, output_dir: str | Path | None = None, device: str | None = None,
                    dist_info: DistInfo | None = None, resume: str | Path | None = None,
                    init_weights: str | Path | None = None, progress: bool = True,
                    overwrite: bool = False, hooks: Sequence[HookBase] = ()) -> Trainer:
        """The config's training run: its data, model, loss, optimizer, schedule and hooks,
        with `hooks` added (see `ssd.engine.build.build_trainer` for the arguments)."""
        from ssd.engine.build import build_trainer  # the config-reading parts, imported on use

        return build_trainer(cls, cfg, output_dir=output_dir, device=device, dist_info=dist_info,
                             resume=resume, init_weights=init_weights, progress=progress,
                             overwrite=overwrite, hooks=hooks)

    @property
    def output_dir(self) -> Path | None:
        return self.output.path if self.output is not None else None

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # ----------------------------------------------------------------------------- loop
    def train(self, max_iter: int | None = None) -> dict[str, Any]:
        """Run the hooks and iterations until `max_iter` (default: the constructor's) or a
        hook's `request_stop`; returns `result` (the last logged losses and evaluation).

        The output folder stays locked until it returns or raises. The error that ended
        training (or a hook's after_train) is raised after every hook's after_train ran.
        """
        self.max_iter = self.max_iter if max_iter is None else max_iter
        self.error, self.stop_reason = None, None
        if self.output is not None:
            self.output.hold()
        try:
            self._batches = self.make_batches(self.iteration)
            self._call_hooks("before_train")
            while self.iteration < self.max_iter and self.stop_reason is None:
                self._call_hooks("before_step")
                self.run_step()
                self._call_hooks("after_step")
        except BaseException as error:  # the hooks' after_train see it, then it is raised
            self.error = error
        finally:
            self._after_train()
            self.release_output_dir()
        if self.error is not None:
            raise self.error
        return self.result

    def run_step(self) -> None:
        """Train on the next batch; `iteration` counts it."""
        waited_from = time.perf_counter()
        images, targets, indices = next(self._batches)
        self.data_wait_s = time.perf_counter() - waited_from
        self.batch = images, targets, indices
        self.losses = self.train_step(images, targets)
        self.batch_indices, self.batch_images = indices, images.shape[0] * self.dist.world_size
        self.iteration += 1

    def train_step(self, images: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """`train_step` with this trainer's parts: images [B,3,S,S]; targets B x [n_i, 5]."""
        return train_step(self.ddp_model, self.criterion, self.optimizer, self.scaler, images,
                          targets, self.precision, self.channels_last, self.clip_grad_norm)

    def request_stop(self, reason: str) -> None:
        """End training after this iteration, as if it were the last (e.g. from a hook)."""
        self.stop_reason = reason

    def hook_seconds_now(self) -> float:
        """`hook_seconds` including the running call of the hooks."""
        running = time.perf_counter() - self._round_start if self._round_start is not None else 0.0
        return self.hook_seconds + running

    def _call_hooks(self, method: str) -> None:
        self._round_start = time.perf_counter()
        try:
            for hook in self.hooks:
                getattr(hook, method)()
        finally:
            self.hook_seconds = self.hook_seconds_now()
            self._round_start = None

    def _after_train(self) -> None:
        """Every hook's after_train; an exception from one is `error` for the next ones."""
        for hook in self.hooks:
            try:
                hook.after_train()
            except BaseException as error:
                self.error = error

    def release_output_dir(self) -> None:
        """Let another run use the output folder: its run.lock is removed. `train()` does this
        when it ends; call it for a Trainer that is not trained. A later `train()` locks again."""
        if self.output is not None:
            self.output.release()

    # ----------------------------------------------------------------------------- state
    def _resume(self, resume) -> Path | None:
        """Load the checkpoint to continue from; returns its path, or None for a fresh start."""
        if resume is None:
            return None
        if str(resume) != "auto":
            self._load_training_state(Path(resume))
            return Path(resume)
        if self.output is None:
            raise ValueError("resume='auto' needs an output folder to look for checkpoints in")
        return ckpt.resume_newest_intact(self.output.path, self._load_training_state,
                                         verbose=self.dist.is_main)

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
                f"model, this run's config builds {ckpt.describe_model_config(self.config)} "
                f"({problem}); resume with the config it was trained with, or start a new run"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state.get("rng"))
            self.iteration = int(state["iteration"])
            self.best_map = float(state.get("best_map", -1.0))
            self.score_threshold = state.get("score_threshold")
            for hook in self.hooks:
                hook.load_state_dict(state)
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise ckpt.CheckpointError(
                f"cannot resume from {path}: its training state does not fit this run "
                f"({type(err).__name__}: {' '.join(str(err).split())})"
            ) from err
        if self.dist.is_main:
            logger.info("Resumed from %s at iteration %d (lr %.6g)", path, self.iteration,
                        self.optimizer.param_groups[0]["lr"])

    def training_state(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it is (with the hooks' state)."""
        state = {
            "model": self.model.state_dict(),
            "config": self.config,
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": get_rng_state(),
            "best_map": self.best_map,
            "score_threshold": self.score_threshold,
        }
        return state | {key: value for hook in self.hooks for key, value in hook.state_dict().items()}

    def save_checkpoint(self, name: str | None = None) -> Path | None:
        """Write the training state atomically to `name` (default model_<iteration>.pth) in the
        output folder; rank 0 only (None elsewhere, or without an output folder)."""
        if not self.dist.is_main or self.output is None:
            return None
        path = self.output.path / name if name else ckpt.checkpoint_path(self.output.path, self.iteration)
        return atomic_torch_save(self.training_state(), path)


def _repeating(batches: Iterable[Batch]) -> Callable[[int], Iterator[Batch]]:
    """A BatchSource over an iterable, iterated again from its start whenever it ends (the
    start iteration is not used)."""
    def endless(start_iter: int) -> Iterator[Batch]:
        while True:
            empty = True
            for batch in batches:
                empty = False
                yield batch
            if empty:
                raise ValueError("the training batches are empty")
    return endless
