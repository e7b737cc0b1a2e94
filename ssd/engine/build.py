"""A config's training run: its data, model, loss, optimizer, schedule and hooks, assembled
into a `Trainer` (what `Trainer.from_config` returns). The only place of the engine that reads
the training config.

The Trainer class comes in as an argument (`Trainer.from_config` passes its own class), so
this module does not import ssd.engine.trainer, which imports it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence, TypeVar

import torch
from torch import nn

from ssd.data import build_dataset, build_transform, make_train_loader, record_split, with_class_names
from ssd.data.build import class_names_for
from ssd.data.image_cache import cached_image_size
from ssd.engine import hooks as training_hooks
from ssd.engine.distributed import DistInfo, check_global_batch, check_sync_bn, convert_sync_batch_norm
from ssd.engine.ema import EMAHook
from ssd.engine.freeze import freeze_modules
from ssd.engine.inference import make_eval_loader
from ssd.engine.metrics_log import MetricsLog
from ssd.engine.output_dir import OutputFolder
from ssd.engine.rng import seed_everything
from ssd.engine.solver import build_optimizer, build_scheduler
from ssd.engine.stopping import stop_hooks
from ssd.loss import build_loss
from ssd.modeling import build_model
from ssd.modeling.derived import resolve_priors
from ssd.modeling.registry import describe_derived_priors
from ssd.postprocess import build_postprocessor
from ssd.precision import batch_image_dtype, precision_label, training_precision
from ssd.weights import load_pretrained_backbone, load_training_weights

logger = logging.getLogger(__name__)

T = TypeVar("T")  # the Trainer class built


def build_trainer(trainer_class: type[T], cfg, output_dir: str | Path | None = None,
                  device: str | None = None, dist_info: DistInfo | None = None,
                  resume: str | Path | None = None, init_weights: str | Path | None = None,
                  progress: bool = True, overwrite: bool = False,
                  hooks: Sequence[training_hooks.HookBase] = ()) -> T:
    """The config's training run as a `trainer_class` (ssd.engine.trainer.Trainer or a
    subclass), with `hooks` after its own (see ssd.engine.hooks).

    The output folder is locked first and checked writable (rank 0), so that a second run into
    it, or a folder it cannot write in, is refused before any heavy work; it stays locked until
    the Trainer's `train()` ends.

    Args:
        output_dir: default cfg.train.output_dir.
        device: "cpu", "cuda", "cuda:1", ... (default: cuda when available).
        resume: a checkpoint path, "auto" (the newest intact one in output_dir, if any), or None.
        init_weights: a weights file (checkpoint or classic state_dict) to start the whole
            model from; model.pretrained initialises only the backbone.
        overwrite: start a new run in an output folder that holds another run's checkpoints,
            deleting them (and its metrics) first; without it such a folder is refused.

    Raises:
        FolderInUseError: another live run holds the output folder (names it and its pid,
            host and start time).
        OutputFolderError: the folder holds another run (and neither resume nor overwrite).
        OSError: the folder cannot be created or written in (named, see ssd.fileio).
    """
    dist = dist_info or DistInfo()
    folder = OutputFolder.claim(output_dir or cfg.train.output_dir, resume, overwrite, dist.is_main)
    try:
        return _assemble(trainer_class, cfg, folder, device, dist, resume, init_weights, progress,
                         overwrite, hooks)
    except BaseException:
        folder.release()
        raise


def _assemble(trainer_class: type[T], cfg, folder: OutputFolder, device: str | None,
              dist: DistInfo, resume, init_weights, progress: bool, overwrite: bool,
              user_hooks: Sequence[training_hooks.HookBase]) -> T:
    """`build_trainer` once the output folder is locked."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    check_global_batch(cfg.solver.batch_size, dist.world_size)
    check_sync_bn(cfg.train.sync_bn, device.type, dist.world_size)
    seed_everything(cfg.train.seed)
    # Data first: a missing data set stops the run before any heavy work.
    cfg = record_split(cfg, folder.path, resume=resume is not None)
    train_set = build_dataset(cfg, train=True)
    cfg = with_class_names(cfg, train_set)  # checkpoints name the classes the files named
    train_transform = build_transform(cfg, train=True)
    if cfg.data.cache_images:
        cache_training_images(train_set, train_transform, progress and dist.is_main)
    test_set = build_dataset(cfg, train=False) if cfg.train.eval_period > 0 else None
    precision = training_precision(cfg.train.amp, device)
    image_dtype = batch_image_dtype(cfg.data.batch_dtype, precision)

    def batches(start_iter: int):
        return iter(make_train_loader(
            train_set, train_transform, batch_size=cfg.solver.batch_size // dist.world_size,
            num_workers=cfg.data.num_workers,
            pin_memory=cfg.data.pin_memory and device.type == "cuda",
            seed=cfg.train.seed, start_iter=start_iter, rank=dist.rank,
            world_size=dist.world_size, low_priority_workers=device.type == "cpu",
            image_dtype=image_dtype,
        ))

    model = build_training_model(cfg, device, init_weights, class_names=train_set.class_names)
    if model.derived_prior_keys and dist.is_main:
        logger.info(describe_derived_priors(model))
    if cfg.train.sync_bn:
        model = convert_sync_batch_norm(model, dist)
    cfg = resolve_priors(cfg, model)  # checkpoints store the derived values
    solver = cfg.solver
    optimizer = build_optimizer(model, solver.lr, solver.momentum, solver.weight_decay,
                                name=solver.optimizer)
    scheduler = build_scheduler(optimizer, solver.lr_steps, solver.gamma, solver.warmup_iters,
                                solver.warmup_factor, schedule=solver.schedule, max_iter=solver.max_iter)
    folder.prepare(resume, overwrite)  # deletes an overwritten run: the metrics log comes after
    log = MetricsLog(folder.path, enabled=dist.is_main)
    summary = describe_run(cfg, model, device, dist, precision, len(train_set))
    hooks = [*default_hooks(cfg, log, summary, train_set, test_set), *user_hooks,
             training_hooks.StopOnSignal()]
    trainer = trainer_class(model, build_loss(cfg), optimizer, scheduler, batches, hooks,
                            max_iter=solver.max_iter, device=device, precision=precision,
                            channels_last=cfg.train.channels_last,
                            clip_grad_norm=solver.clip_grad_norm, compile=cfg.train.compile,
                            dist_info=dist, output=folder, resume=resume, config=cfg.to_dict(),
                            train_set=train_set, progress=progress)
    if resume is not None:
        log.truncate_after(trainer.iteration)  # a resumed run rewrites the later records
    return trainer


def default_hooks(cfg, log: MetricsLog, summary: str, train_set,
                  test_set=None) -> list[training_hooks.HookBase]:
    """The config's hooks, in the order they run: the lr schedule, the weight average
    (train.ema_decay), the first batch's picture (train_batch0.jpg), the loss checks, the
    metrics log (train.log_period), checkpoints (train.checkpoint_period,
    train.keep_checkpoints), evaluation on `test_set` (train.eval_period; none without a test
    set; writes eval/; scores the weight average when there is one), the stop conditions
    (train.patience, train.max_time, train.preempt_signal: ssd.engine.stopping), the DDP weight
    check and the metrics plot."""
    train = cfg.train
    ema = EMAHook(train.ema_decay, train.ema_ramp) if train.ema_decay else None
    hooks = [
        training_hooks.LRSchedule(),
        *([ema] if ema is not None else []),
        training_hooks.FirstBatchPicture(
            getattr(train_set, "class_names", None) or cfg.data.class_names or [], cfg.data.mean),
        training_hooks.LossCheck([train.log_period, train.checkpoint_period, train.eval_period],
                                 image_ids=train_set.image_ids),
        training_hooks.MetricsLogger(train.log_period, log, summary),
        training_hooks.PeriodicCheckpointer(train.checkpoint_period, train.keep_checkpoints),
    ]
    if test_set is not None:
        loader = make_eval_loader(test_set, build_transform(cfg, train=False),
                                  batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers)
        hooks.append(training_hooks.Evaluator(train.eval_period, test_set, loader,
                                              build_postprocessor(cfg), cfg.test.metric, log,
                                              scored_model=ema.averaged if ema is not None else None))
    return [*hooks, *stop_hooks(train, log), training_hooks.RanksAgree(),
            training_hooks.MetricsPlot(log)]


def describe_run(cfg, model: nn.Module, device: torch.device, dist: DistInfo, precision: str,
                 num_train_images: int) -> str:
    """'Training ssd7 SSD96 (... parameters, ... priors, 4 classes) on cpu (float32): 16
    training images, batch 4 (float32 images)': the first line of a training log."""
    params = sum(p.numel() for p in model.parameters())
    processes = f" x{dist.world_size} processes" if dist.enabled else ""
    image_dtype = str(batch_image_dtype(cfg.data.batch_dtype, precision)).removeprefix("torch.")
    return (f"Training {cfg.model.backbone} SSD{cfg.model.image_size} ({params:,} parameters, "
            f"{model.priors.shape[0]} priors, {cfg.model.num_classes} classes) on {device}{processes} "
            f"({precision_label(precision)}): {num_train_images} training images, "
            f"batch {cfg.solver.batch_size} ({image_dtype} images)")


def build_training_model(cfg, device: torch.device, init_weights=None, class_names=None) -> nn.Module:
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


def cache_training_images(train_set, transform, progress: bool) -> None:
    """`data.cache_images`: decode the training images into memory before the workers start
    (every DDP process holds its own copy), already resized to the input size when `transform`
    only resizes and mirrors (the same batches from a fraction of the memory)."""
    start = time.perf_counter()
    size = cached_image_size(transform)
    held = train_set.cache_images(progress=progress, size=size)
    logger.info("data.cache_images: %d training images decoded into memory%s (%.2f GiB) in %.1f s",
                len(train_set), f", resized to {size} px" if size else "", held / 2**30,
                time.perf_counter() - start)
