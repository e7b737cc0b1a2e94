"""Training hooks: everything the training loop does besides the step itself.

A hook is told when training starts and ends and around every iteration; `Trainer` calls, in
the order of its hook list:

    before_train()                                 once, before the first iteration
    before_step(), [the step], after_step()        every iteration
    after_train()                                  once, also after an error or an interrupt

`trainer.iteration` counts finished iterations: before_step sees the iterations done before
this one, after_step sees this one counted. In after_train, `trainer.error` is the exception
that ended training (None when it reached max_iter or a hook called `trainer.request_stop`);
an exception raised by a hook's after_train becomes `trainer.error` for the hooks after it.

A hook may add entries to every checkpoint (`state_dict`) and read them back when a run is
resumed (`load_state_dict`, called while the Trainer is built).

The hooks of `Trainer.from_config`, in order: LRSchedule, EMAHook (train.ema_decay),
FirstBatchPicture, LossCheck, MetricsLogger, PeriodicCheckpointer, Evaluator, the stop
conditions (ssd.engine.stopping: EarlyStopping, TimeBudget, Preemption, StopAgreement,
StopReport), RanksAgree (several processes), MetricsPlot, the user's hooks, StopOnSignal.
"""

from __future__ import annotations

import datetime
import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ssd.batch_pictures import FIRST_BATCH_NAME, save_batch_picture
from ssd.data import DataError
from ssd.engine import checkpoint as ckpt
from ssd.engine.distributed import barrier, ranks_agree
from ssd.engine.inference import evaluate_model
from ssd.engine.metrics_log import MetricsLog, plot_metrics
from ssd.engine.preemption import PREEMPTED
from ssd.engine.solver import advance_schedule, set_schedule_iteration
from ssd.evaluation import coco_numbers
from ssd.evaluation.report import results_dictionary, write_evaluation_report
from ssd.postprocess import PostProcessor
from ssd.progress import progress_bar, shows_bar, write_line

logger = logging.getLogger(__name__)

# Signals that stop training cleanly: finish the iteration, write a checkpoint, exit.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Loss spike warning: a loss above LOSS_SPIKE_FACTOR x its exponential moving average (weight
# LOSS_EMA_DECAY on the past) after LOSS_SPIKE_WARMUP_ITERS iterations is logged.
LOSS_SPIKE_FACTOR = 3.0
LOSS_EMA_DECAY = 0.9
LOSS_SPIKE_WARMUP_ITERS = 20

# Digits kept in the log records: losses, seconds, fractions, images per second.
LOSS_DIGITS, SECONDS_DIGITS, RATE_DIGITS = 6, 4, 2


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after an iteration (`PeriodicCheckpointer` saves it)."""


class HookBase:
    """Base of the training hooks; every method does nothing by default.

    Attributes:
        trainer: the ssd.engine.trainer.Trainer running the hook (set when the Trainer is
            built; not imported here, as the trainer imports this module).
    """

    trainer: Any

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once when training ends, also after an error (see `trainer.error`)."""

    def before_step(self) -> None:
        """Called before every iteration."""

    def after_step(self) -> None:
        """Called after every iteration (`trainer.losses` holds its losses)."""

    def state_dict(self) -> dict[str, Any]:
        """Entries this hook adds to every checkpoint (top-level keys); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from the checkpoint a run resumes from (the whole checkpoint dict, the
        model already loaded); called while the Trainer is built."""


class PeriodicHook(HookBase):
    """Runs `run()` after every iteration that is a multiple of `period` (0: never), and once
    more when training ends without an error after an iteration that was not one."""

    def __init__(self, period: int):
        self.period = period

    def is_due(self) -> bool:
        return bool(self.period) and self.trainer.iteration % self.period == 0

    def after_step(self) -> None:
        if self.is_due():
            self.run()

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.error is None and trainer.losses is not None and self.period and not self.is_due():
            self.run()

    def run(self) -> None:
        raise NotImplementedError


class LRSchedule(HookBase):
    """Sets the learning rate of the next iteration after each one (`trainer.scheduler`)."""

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.scaler.is_enabled():
            # GradScaler skips the step when gradients overflowed, and only the device knows
            # (get_scale() would wait for it every step). The lr is the schedule's value at the
            # iteration either way, so it is set without stepping the scheduler.
            set_schedule_iteration(trainer.scheduler, trainer.iteration)
        else:
            advance_schedule(trainer.scheduler, trainer.iteration, optimizer_stepped=True)


class FirstBatchPicture(HookBase):
    """Draws the run's first augmented batch, as the model sees it, into
    <output>/train_batch0.jpg after the first iteration (rank 0; not when resuming).

    Args:
        class_names: the names of labels 1.. (the training set's).
        mean: data.mean (BGR), added back to the images (see ssd.batch_pictures).
    """

    def __init__(self, class_names: Sequence[str], mean: Sequence[float]):
        self.class_names, self.mean = list(class_names), mean

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.iteration == 1 and trainer.dist.is_main and trainer.output_dir is not None:
            images, targets, _ = trainer.batch
            save_batch_picture(images, targets, self.class_names, self.mean,
                               trainer.output_dir / FIRST_BATCH_NAME)


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


class LossCheck(HookBase):
    """Stops at the first non-finite loss and warns about loss spikes.

    The losses stay on the device until an iteration that is a multiple of one of `periods`
    (the periods of the hooks that read or save the training state) or the end of training:
    then all of them are read at once, so the loop never waits for the device in between.

    Args:
        periods: iterations at which the losses are read (0s are ignored).
        image_ids: data set index -> image name, to name the images of a bad batch.
        monitor: the loss-spike monitor (default: LossSpikeMonitor()).
    """

    def __init__(self, periods: Sequence[int], image_ids: Sequence[str] | None = None,
                 monitor: LossSpikeMonitor | None = None):
        self.periods = [period for period in periods if period]
        self.image_ids = image_ids
        self.monitor = monitor or LossSpikeMonitor()
        # (iteration, losses {"loss", "loss_loc", "loss_conf"} of scalar device tensors, indices [B])
        self._unchecked: list[tuple[int, dict[str, torch.Tensor], torch.Tensor]] = []

    def after_step(self) -> None:
        trainer = self.trainer
        self._unchecked.append((trainer.iteration, trainer.losses, trainer.batch_indices))
        if any(trainer.iteration % period == 0 for period in self.periods):
            self.check()

    def after_train(self) -> None:
        if self.trainer.error is None or isinstance(self.trainer.error, (DataError, TrainingInterrupted)):
            self.check()  # before the state is saved

    def check(self) -> None:
        """Read the unchecked losses (one wait for the device) and feed the spike monitor.

        Raises:
            TrainingError: naming the first non-finite iteration, its losses and its batch's
                images (the later iterations trained on non-finite weights; nothing was saved).
        """
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return
        names = list(unchecked[0][1])
        values = torch.stack([torch.stack([losses[name].float() for name in names])
                              for _, losses, _ in unchecked]).tolist()  # [steps, len(names)]
        for (iteration, _, indices), row in zip(unchecked, values):
            losses = dict(zip(names, row))
            if not all(np.isfinite(value) for value in row):
                self._raise_non_finite(iteration, losses, indices)
            self.monitor.update(iteration, losses["loss"])

    def _raise_non_finite(self, iteration: int, losses: dict[str, float], indices: torch.Tensor):
        ids = [self.image_ids[i] if self.image_ids is not None else f"#{i}" for i in indices.tolist()]
        values = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        folder = self.trainer.output_dir
        newest = ckpt.newest_checkpoint(folder) if folder and self.trainer.dist.is_main else None
        saved = (f"The newest checkpoint, {newest}, is unchanged" if newest is not None
                 else f"No checkpoint was written to {folder} yet")
        raise TrainingError(
            f"Non-finite loss at iteration {iteration} ({values}); batch images: "
            f"{', '.join(map(str, ids))}. {saved}; try a lower solver.lr or "
            f"solver.clip_grad_norm, or check these images' annotations."
        )


class MetricsLogger(PeriodicHook):
    """Every `period` iterations: the losses, the lr, and the images/s of the iterations since
    the previous record, split into the time spent waiting for data and the rest (the steps);
    to metrics.jsonl and the progress bar, or, without a bar on a terminal (--no-progress,
    stderr redirected), as one log line with the ETA (rank 0). Also logs `summary` when
    training starts.

    The time the hooks spend (checkpoints, evaluation, ...) is not counted as the loop's.
    """

    def __init__(self, period: int, log: MetricsLog, summary: str = ""):
        super().__init__(period)
        self.log, self.summary = log, summary
        self._lr = float("nan")
        self.bar = None

    def before_train(self) -> None:
        trainer = self.trainer
        if trainer.dist.is_main and self.summary:
            logger.info("%s, iterations %d -> %d, output %s", self.summary, trainer.iteration,
                        trainer.max_iter, trainer.output_dir)
        self.bar = progress_bar(total=trainer.max_iter, initial=trainer.iteration, desc="train",
                                unit="it", enabled=trainer.progress, plain_lines=False)
        self.log_lines = trainer.dist.is_main and not shows_bar(trainer.progress)
        # The ETA of the log lines: when and from which iteration this train() started.
        self._started, self._start_iteration = time.perf_counter(), trainer.iteration
        self._restart_window()

    def before_step(self) -> None:
        self._lr = self.trainer.optimizer.param_groups[0]["lr"]  # the LR this step uses

    def after_step(self) -> None:
        self._images += self.trainer.batch_images
        self._data_wait += self.trainer.data_wait_s
        self.bar.update(1)
        super().after_step()

    def after_train(self) -> None:
        super().after_train()
        self.bar.close()

    def run(self) -> None:
        trainer = self.trainer
        elapsed = max(time.perf_counter() - self._start
                      - (trainer.hook_seconds - self._hook_seconds_at_start), 1e-9)
        record = {"kind": "train", "iteration": trainer.iteration,
                  **{k: round(v.item(), LOSS_DIGITS) for k, v in trainer.losses.items()},
                  "lr": self._lr,
                  "images_per_second": round(self._images / elapsed, RATE_DIGITS),
                  "data_wait_s": round(self._data_wait, SECONDS_DIGITS),
                  "step_s": round(elapsed - self._data_wait, SECONDS_DIGITS),
                  "data_wait_fraction": round(self._data_wait / elapsed, SECONDS_DIGITS)}
        if self.log_lines:
            logger.info(self.log_line(record))
        else:
            self.bar.set_postfix(loss_loc=f"{record['loss_loc']:.3f}",
                                 loss_conf=f"{record['loss_conf']:.3f}", lr=f"{record['lr']:.2e}",
                                 img_s=f"{record['images_per_second']:.1f}",
                                 data_wait=f"{100 * record['data_wait_fraction']:.0f}%")
        self.log.write(record)
        trainer.result.update(record)
        self._restart_window()

    def log_line(self, record: dict[str, Any]) -> str:
        """One plain log line: iteration, losses, lr, images/s, data wait and ETA."""
        trainer = self.trainer
        done = trainer.iteration - self._start_iteration
        elapsed = time.perf_counter() - self._started
        remaining = (trainer.max_iter - trainer.iteration) * elapsed / done if done > 0 else 0.0
        eta = datetime.timedelta(seconds=round(max(remaining, 0.0)))
        return (f"iteration {trainer.iteration}/{trainer.max_iter}  loss {record['loss']:.4f} "
                f"(loc {record['loss_loc']:.4f}, conf {record['loss_conf']:.4f})  "
                f"lr {record['lr']:.2e}  {record['images_per_second']:.1f} images/s "
                f"(data wait {100 * record['data_wait_fraction']:.0f}%)  ETA {eta}")

    def _restart_window(self) -> None:
        self._start, self._hook_seconds_at_start = time.perf_counter(), self.trainer.hook_seconds_now()
        self._images, self._data_wait = 0, 0.0


class PeriodicCheckpointer(PeriodicHook):
    """Writes model_<iteration>.pth every `period` iterations and when training ends, keeping
    the newest `keep`; also after an interrupt (Ctrl-C, SIGTERM) and after a bad training image
    (the last finished iteration), naming the file in the error."""

    def __init__(self, period: int, keep: int):
        super().__init__(period)
        self.keep = keep

    def run(self) -> Path | None:
        trainer = self.trainer
        path = trainer.save_checkpoint()
        if path is not None:
            ckpt.prune_checkpoints(path.parent, self.keep)
        return path

    def after_train(self) -> None:
        error = self.trainer.error
        if isinstance(error, TrainingInterrupted):
            path = self.run()
            raise KeyboardInterrupt(f"{error}; checkpoint written to {path}. Continue with "
                                    f"--resume auto (or --resume {path}).")
        if isinstance(error, DataError):
            self._raise_data_error(error)
        super().after_train()

    def _raise_data_error(self, error: DataError) -> None:
        iteration = self.trainer.iteration
        saved = self.run() if iteration > 0 else None
        state = (f"iteration {iteration} is saved in {saved}; continue with --resume auto"
                 if saved else "no iteration had finished, nothing was saved")
        raise DataError(f"{_worker_error_message(error)} (training stopped: {state})",
                        error.reason, error.path) from None


class Evaluator(PeriodicHook):
    """Every `period` iterations (and at the end): the model scored on `dataset` by
    `ssd.engine.inference.evaluate_model`, as ssd-eval scores it; rank 0 only. Logs the mAP,
    keeps best.pth, writes results.json and the pictures into <output>/eval/ (replaced by each
    evaluation), and keeps the best-F1 score threshold in `trainer.score_threshold` (stored in
    the checkpoints).

    Args:
        dataset: the test split; loader: its evaluation loader (`make_eval_loader`).
        postprocess: the detection settings; metric: "voc07", "voc12" or "coco".
        scored_model: returns the model to score (default: `trainer.model`), e.g. the weight
            average of `ssd.engine.ema.EMAHook.averaged`.

    No final evaluation follows a preemption (`trainer.stop_reason` "preempted"): the job is
    about to lose its machine.
    """

    def __init__(self, period: int, dataset, loader, postprocess: PostProcessor, metric: str,
                 log: MetricsLog, scored_model: Callable[[], torch.nn.Module] | None = None):
        super().__init__(period)
        self.dataset, self.loader, self.postprocess = dataset, loader, postprocess
        self.metric, self.log = metric, log
        self.scored_model = scored_model

    def after_train(self) -> None:
        if self.trainer.stop_reason != PREEMPTED:
            super().after_train()

    def run(self) -> dict[str, Any] | None:
        trainer = self.trainer
        if not trainer.dist.is_main:
            barrier(trainer.dist)
            return None
        model = self.scored_model() if self.scored_model is not None else trainer.model
        was_training = model.training
        model.eval()
        result = evaluate_model(model, self.dataset, self.loader, trainer.device,
                                self.postprocess, self.metric, precision="fp32",
                                progress=trainer.progress)
        model.train(was_training)
        record = {"kind": "eval", "iteration": trainer.iteration, "mAP": result["mAP"],
                  "metric": self.metric, "ap": result.get("ap", {})}
        if "coco" in result:  # AP, AP50, AP75, APs, APm, APl and the ARs
            record["coco"] = coco_numbers(result["coco"])
        self.log.write(record)
        write_line(f"[iteration {trainer.iteration}] {self.metric} mAP = {result['mAP']:.4f}")
        trainer.score_threshold = result["analysis"]["best_f1"]["threshold"]
        if trainer.output_dir is not None:
            write_evaluation_report(trainer.output_dir / ckpt.EVAL_DIR, result,
                                    results_dictionary(result, metric=self.metric,
                                                       iteration=trainer.iteration))
        if result["mAP"] > trainer.best_map:
            trainer.best_map = result["mAP"]
            trainer.save_checkpoint(ckpt.BEST_NAME)
        trainer.result["eval"] = record
        barrier(trainer.dist)
        return record


class RanksAgree(HookBase):
    """When training ends (several processes): whether every rank holds the same weights."""

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.error is not None or not trainer.dist.enabled:
            return
        agree, sums = ranks_agree(trainer.model, trainer.dist)
        if trainer.dist.is_main:
            logger.info("DDP: weights %s across %d ranks (checksums %s)",
                        "identical" if agree else "DIFFERENT", trainer.dist.world_size,
                        ", ".join(f"{s:.10e}" for s in sums))
        trainer.result["ranks_agree"] = agree


class MetricsPlot(HookBase):
    """When training ends: metrics.png from metrics.jsonl (rank 0); closes the log."""

    def __init__(self, log: MetricsLog):
        self.log = log

    def after_train(self) -> None:
        if self.trainer.error is not None:
            return
        if self.trainer.dist.is_main and self.log.path.is_file():
            plot_metrics(self.log.path, self.log.path.with_name("metrics.png"))
        self.log.close()


class StopOnSignal(HookBase):
    """Ctrl-C and SIGTERM: finish the iteration (and its hooks), then stop with
    TrainingInterrupted (a second Ctrl-C aborts at once, without saving)."""

    def __init__(self):
        self._previous: dict = {}
        self._received: str | None = None  # the signal's name once received

    def before_train(self) -> None:
        self._received = None

        def request_stop(signum, frame):
            name = signal.Signals(signum).name
            if self._received:  # second signal: stop now
                raise KeyboardInterrupt(f"{name} again: stopped without saving")
            self._received = name
            write_line(f"{name}: finishing this iteration and writing a checkpoint "
                       "(press Ctrl-C again to abort without saving)")

        for stop_signal in STOP_SIGNALS:
            try:
                self._previous[stop_signal] = signal.signal(stop_signal, request_stop)
            except ValueError:  # not in the main thread: signals stay as they are
                pass

    def after_step(self) -> None:
        if self._received:
            raise TrainingInterrupted(f"Interrupted ({self._received}) at iteration "
                                      f"{self.trainer.iteration}")

    def after_train(self) -> None:
        previous, self._previous = self._previous, {}
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
