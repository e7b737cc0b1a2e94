"""Checkpoints: atomic writes, the last K kept, `best.pth`, and finding the newest to resume.

A checkpoint is a dict saved with torch.save:
    model       state_dict of the bare model (no `module.` prefix)
    config      the full config as a plain dict
    iteration   number of finished training iterations
    optimizer, scheduler, scaler, rng, best_map   training state for an exact resume
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^model_(\d+)\.pth$")
BEST_NAME = "best.pth"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` through a temp file in the same folder, fsync, then rename.

    Either the complete new file replaces `path`, or (on any error, e.g. a full disk) `path`
    is left exactly as it was and the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600 files
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    # The training state holds numpy RNG state, so this is not weights_only.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ValueError(
            f"{path} is not a training checkpoint of this project (expected a dict with "
            f"'model' and 'iteration'); to start from weights only, use model.pretrained or "
            f"--weights instead of --resume"
        )
    return state
