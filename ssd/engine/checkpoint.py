"""Checkpoints: atomic writes, the last K kept, `best.pth`, and finding the newest to resume.

A checkpoint is a dict saved with torch.save:
    model       state_dict of the bare model (no `module.` prefix)
    config      the full config as a plain dict
    iteration   number of finished training iterations
    optimizer, scheduler, scaler, rng, best_map   training state for an exact resume
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ssd.fileio import atomic_torch_save, safe_torch_load

CHECKPOINT_PATTERN = re.compile(r"^model_(\d+)\.pth$")
BEST_NAME = "best.pth"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (see `ssd.fileio.atomic_write`)."""
    return atomic_torch_save(obj, path)


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint written by `atomic_save` (a dict with model, config, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ValueError(
            f"{path} is not a training checkpoint of this project (expected a dict with "
            f"'model' and 'iteration'); to start from weights only, use model.pretrained or "
            f"--weights instead of --resume"
        )
    return state
