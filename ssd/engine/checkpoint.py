"""Checkpoints: atomic writes, the last K kept, `best.pth`, finding the newest to resume, and
the files that make up a run in an output folder.

A checkpoint is a dict of plain data (tensors, containers, numbers, strings) saved with
torch.save and read back without running pickled code (`ssd.fileio.safe_torch_load`):
    model       state_dict of the bare model (no `module.` prefix)
    config      the full config as a plain dict
    iteration   number of finished training iterations
    optimizer, scheduler, scaler, rng, best_map   training state for an exact resume
    ema         train.ema_decay: {"model": the averaged weights, "updates"}; what ssd.weights
                loads for prediction, evaluation and export
    evaluations_without_improvement, train_seconds   train.patience / train.max_time counters
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ssd.batch_pictures import FIRST_BATCH_NAME
from ssd.fileio import UnsafeFileError, safe_torch_load

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^model_(\d+)\.pth$")
BEST_NAME = "best.pth"
METRICS_NAME = "metrics.jsonl"
# What a run leaves besides its checkpoints and metrics.jsonl (removed with them on overwrite).
EVAL_DIR = "eval"  # the latest evaluation's results.json and pictures
RUN_EXTRAS = ("metrics.png", "tensorboard", EVAL_DIR, FIRST_BATCH_NAME)
# Keys named in a one-line architecture mismatch message.
MAX_KEYS_NAMED = 2


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from; the one-line message names the file and the problem."""


def checkpoint_path(output_dir: str | Path, iteration: int) -> Path:
    return Path(output_dir) / f"model_{iteration:07d}.pth"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the periodic checkpoints in `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        matched = CHECKPOINT_PATTERN.match(path.name)
        if matched:
            found.append((int(matched.group(1)), path))
    return sorted(found)


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest iteration in `output_dir`, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` periodic checkpoints (best.pth is never touched)."""
    found = list_checkpoints(output_dir)
    removed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def run_files(output_dir: str | Path) -> list[Path]:
    """The files of a training run in `output_dir`: model_*.pth, best.pth, metrics.jsonl."""
    folder = Path(output_dir)
    named = [folder / BEST_NAME, folder / METRICS_NAME]
    return [path for _, path in list_checkpoints(folder)] + [path for path in named if path.is_file()]


def remove_run_files(output_dir: str | Path) -> list[Path]:
    """Delete a run's checkpoints, best.pth, metrics.jsonl, and its RUN_EXTRAS (metrics.png, the
    tensorboard and eval folders, train_batch0.jpg).
    Returns what was removed."""
    folder = Path(output_dir)
    removed = run_files(folder)
    for path in removed:
        path.unlink(missing_ok=True)
    for name in RUN_EXTRAS:
        extra = folder / name
        if extra.is_dir():
            shutil.rmtree(extra)
            removed.append(extra)
        elif extra.is_file():
            extra.unlink()
            removed.append(extra)
    return removed


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint (a dict with model, config, ...; written with
    `ssd.fileio.atomic_torch_save`).

    Nothing pickled in the file runs (plain data and numpy arrays only).

    Raises:
        FileNotFoundError: `path` does not exist.
        CheckpointError: the file holds pickled code, is truncated or not a .pth file, or is not
            a training checkpoint (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        state = safe_torch_load(path)
    except UnsafeFileError as err:
        raise CheckpointError(f"cannot resume: {_one_line(str(err))}") from err
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "iteration" not in state:
        raise CheckpointError(
            f"{path} is not a training checkpoint of this project (expected a dict with "
            f"'model' and 'iteration'); to start from weights only, use model.pretrained or "
            f"--weights instead of --resume"
        )
    return state


def architecture_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """One line saying how `state_dict` differs from `model`'s parameters, or None if it fits.

    Example: "2 parameters differ in shape (conf.0.weight: checkpoint [84, 512, 3, 3], model
    [16, 512, 3, 3], ...)".
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [key for key in expected if key in state_dict
                and tuple(state_dict[key].shape) != tuple(expected[key].shape)]
    parts = []
    if reshaped:
        named = ", ".join(f"{key}: checkpoint {list(state_dict[key].shape)}, model "
                          f"{list(expected[key].shape)}" for key in reshaped[:MAX_KEYS_NAMED])
        parts.append(f"{len(reshaped)} parameters differ in shape ({named}"
                     f"{', ...' if len(reshaped) > MAX_KEYS_NAMED else ''})")
    if missing:
        parts.append(f"{len(missing)} model parameters missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown parameters (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def describe_model_config(config: dict[str, Any] | None) -> str:
    """'ssd7 SSD160, 4 classes' from a checkpoint's config dict ('unknown model' without one)."""
    try:
        model = config["model"]
        return f"{model['backbone']} SSD{model['image_size']}, {model['num_classes']} classes"
    except (KeyError, TypeError):
        return "unknown model"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def resume_newest_intact(output_dir: str | Path, resume_from: Callable[[Path], None],
                         verbose: bool = True) -> Path | None:
    """`--resume auto`: call `resume_from` on the checkpoints of `output_dir`, newest first, until
    one loads; a damaged one (CheckpointError: truncated, unreadable, another model) is skipped
    with a warning. Returns the path loaded, or None when the folder holds no checkpoint.

    Raises:
        CheckpointError: every checkpoint is damaged (names the newest one's problem).
    """
    errors = []
    for _, path in reversed(list_checkpoints(output_dir)):
        try:
            resume_from(path)
            return path
        except CheckpointError as err:
            errors.append(err)
            if verbose:
                logger.warning("--resume auto: skipping a damaged checkpoint: %s", err)
    if errors:
        raise CheckpointError(
            f"--resume auto: none of the {len(errors)} checkpoint(s) in {output_dir} can be "
            f"resumed from; the newest: {errors[0]}. Start a new run with --overwrite or in "
            f"another folder"
        )
    if verbose:
        logger.info("--resume auto: no checkpoint in %s, starting from scratch", output_dir)
    return None
