"""Runs that stop themselves: early stopping (train.patience), a time budget (train.max_time)
and preemption (train.preempt_signal), as training hooks.

A stop condition asks the trainer to stop after the current iteration
(`trainer.request_stop(reason)`); the periodic checkpointer then saves that iteration as it
saves the last one, `StopReport` logs why and appends {"kind": "stop", "reason": ...} to
metrics.jsonl, and --resume auto continues from the checkpoint. What the conditions count
(evaluations without a better mAP, seconds trained) is stored in the checkpoints, so a resumed
run goes on counting; a larger train.patience / train.max_time / solver.max_iter lets it go on.

Under torchrun the ranks must stop after the same iteration: `StopAgreement` exchanges every
rank's request after each iteration (one small CPU all-reduce) and all of them take the most
urgent one.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from ssd.engine import checkpoint as ckpt
from ssd.engine.distributed import cpu_group, max_over_ranks
from ssd.engine.hooks import HookBase
from ssd.engine.metrics_log import MetricsLog
from ssd.engine.preemption import EXIT_PREEMPTED, PREEMPTED
from ssd.progress import write_line

logger = logging.getLogger(__name__)

PATIENCE, MAX_TIME = "patience", "max_time"
# The reasons the ranks agree on, least urgent first (the largest index wins).
STOP_REASONS = (PATIENCE, MAX_TIME, PREEMPTED)


class StopCondition(HookBase):
    """A hook that may stop training; `details` go into the stop record when it did."""

    reason: str

    def __init__(self):
        self.details: dict[str, Any] = {}

    def stop(self, message: str, **details: Any) -> None:
        """Stop after this iteration because of `message` (logged)."""
        self.details = details
        logger.info("Stopping at iteration %d: %s", self.trainer.iteration, message)
        self.trainer.request_stop(self.reason)


class EarlyStopping(StopCondition):
    """train.patience: stop after `patience` evaluations in a row without a better mAP than the
    best so far (the Evaluator hook's, which must run before this one).

    Checkpoints store `evaluations_without_improvement`; the best mAP is `trainer.best_map`.
    """

    reason = PATIENCE

    def __init__(self, patience: int):
        super().__init__()
        self.patience = patience
        self.stale = 0  # evaluations since the best one
        self._best = -1.0

    def before_train(self) -> None:
        self._best = self.trainer.best_map

    def after_step(self) -> None:
        trainer = self.trainer
        record = trainer.result.get("eval")
        if record is None or record["iteration"] != trainer.iteration:
            return  # no evaluation in this iteration (or not on this rank)
        if record["mAP"] > self._best:
            self._best, self.stale = record["mAP"], 0
            return
        self.stale += 1
        if self.stale >= self.patience:
            self.stop(f"no better mAP than {self._best:.4f} in the last {self.stale} evaluations "
                      f"(train.patience={self.patience})", best_mAP=self._best,
                      evaluations_without_improvement=self.stale)

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations_without_improvement": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stale = int(state.get("evaluations_without_improvement", 0))


class TimeBudget(StopCondition):
    """train.max_time: stop once the run has trained `max_time` seconds of wall-clock time,
    summed over its launches (checkpoints store `train_seconds`). Time is counted from the
    start of the loop (not the setup before it) and includes evaluations and checkpoints.
    A run resumed with its budget spent stops before its first iteration."""

    reason = MAX_TIME

    def __init__(self, max_time: float):
        super().__init__()
        self.max_time = max_time
        self.seconds_before = 0.0  # trained by the earlier launches
        self._started: float | None = None

    def seconds(self) -> float:
        """Seconds trained so far, this launch included."""
        running = time.monotonic() - self._started if self._started is not None else 0.0
        return self.seconds_before + running

    def before_train(self) -> None:
        self._started = time.monotonic()
        self._check()

    def after_step(self) -> None:
        self._check()

    def after_train(self) -> None:
        self.seconds_before, self._started = self.seconds(), None

    def _check(self) -> None:
        used = self.seconds()
        if used >= self.max_time:
            self.stop(f"{used:.0f} s trained, train.max_time={self.max_time:g} s",
                      seconds=round(used, 3), max_time=self.max_time)

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds_before = float(state.get("train_seconds", 0.0))


class Preemption(StopCondition):
    """train.preempt_signal (e.g. SIGUSR1, which Slurm sends ahead of a time limit or
    preemption): finish the iteration, save it, stop with `trainer.stop_reason` "preempted"
    (ssd-train then exits with EXIT_PREEMPTED). The handler is installed while training runs
    (from the main thread); the previous one is restored after, or the signal ignored from
    then on when it came."""

    reason = PREEMPTED

    def __init__(self, signal_name: str):
        super().__init__()
        self.signal = signal.Signals[signal_name]
        self._received = False
        self._previous = None

    def before_train(self) -> None:
        self._received = False

        def request_stop(signum, frame):
            self._received = True
            write_line(f"{self.signal.name}: saving a checkpoint after this iteration, then "
                       f"exiting with status {EXIT_PREEMPTED} (continue with --resume auto)")

        try:
            self._previous = signal.signal(self.signal, request_stop)
        except ValueError:  # not in the main thread: signals stay as they are
            self._previous = None

    def after_step(self) -> None:
        if self._received and self.trainer.stop_reason is None:
            self.stop(f"{self.signal.name} received", signal=self.signal.name)

    def after_train(self) -> None:
        if self._previous is None:
            return
        # Once preempted the process is about to exit: a repeated signal must not kill it
        # (the default action of SIGUSR1) while it writes the checkpoint and exits.
        signal.signal(self.signal, signal.SIG_IGN if self._received else self._previous)
        self._previous = None


class StopAgreement(HookBase):
    """Several processes: after every iteration, all ranks take the most urgent stop reason
    any of them has (STOP_REASONS order), so that they stop after the same iteration (a rank
    that stopped alone would leave the others waiting in the next step's all-reduce)."""

    def __init__(self):
        self._group = None
        self._group_made = False

    def before_train(self) -> None:
        if self.trainer.dist.enabled and not self._group_made:
            self._group, self._group_made = cpu_group(self.trainer.dist), True

    def after_step(self) -> None:
        trainer = self.trainer
        if not trainer.dist.enabled:
            return
        mine = STOP_REASONS.index(trainer.stop_reason) + 1 if trainer.stop_reason in STOP_REASONS else 0
        agreed = max_over_ranks(mine, trainer.dist, self._group)
        if agreed > mine:
            trainer.request_stop(STOP_REASONS[agreed - 1])


class StopReport(HookBase):
    """When a stop condition ended training: logs why and appends the stop record
    {"kind": "stop", "reason", "iteration", "checkpoint", ...the condition's details} to
    metrics.jsonl (rank 0). Runs after the checkpointer's after_train, which saved the
    iteration, and before MetricsPlot closes the log."""

    def __init__(self, log: MetricsLog, conditions: list[StopCondition]):
        self.log, self.conditions = log, conditions

    def after_train(self) -> None:
        trainer = self.trainer
        reason = trainer.stop_reason
        if trainer.error is not None or reason not in STOP_REASONS or not trainer.dist.is_main:
            return
        details = next((c.details for c in self.conditions if c.reason == reason), {})
        saved = (ckpt.checkpoint_path(trainer.output_dir, trainer.iteration).name
                 if trainer.output_dir is not None and trainer.losses is not None else None)
        self.log.write({"kind": "stop", "reason": reason, "iteration": trainer.iteration,
                        "checkpoint": saved, **details})
        logger.info("Stopped at iteration %d (%s)%s; continue with --resume auto", trainer.iteration,
                    reason, f", saved in {saved}" if saved else "")


def stop_hooks(train_cfg, log: MetricsLog) -> list[HookBase]:
    """The stop conditions the config's `train` section turns on, the rank agreement and the
    report, in the order they must run (after the Evaluator)."""
    conditions: list[StopCondition] = []
    if train_cfg.patience is not None:
        conditions.append(EarlyStopping(train_cfg.patience))
    if train_cfg.max_time is not None:
        conditions.append(TimeBudget(train_cfg.max_time))
    if train_cfg.preempt_signal is not None:
        conditions.append(Preemption(train_cfg.preempt_signal))
    return [*conditions, StopAgreement(), StopReport(log, conditions)]
