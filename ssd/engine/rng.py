"""Random number generators: seeding a run, and their state as plain data for checkpoints."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any] | None) -> None:
    """Restore `get_rng_state()`'s result; older checkpoints hold numpy's own state tuple."""
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
