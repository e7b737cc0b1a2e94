"""Shared by the trainer tests: a seconds-long shapes config and scripts/train.py's main()."""

import json
from pathlib import Path

from conftest import load_script

from ssd.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"


def tiny_overrides(data_root, **extra) -> list[str]:
    """A seconds-long shapes run: 16 training images of 96 px, batch 4, no evaluation."""
    values = {
        "data.root": str(data_root),
        "data.shapes.num_train": 16,
        "data.shapes.num_test": 4,
        "data.shapes.image_size": 96,
        "data.num_workers": 0,
        "solver.batch_size": 4,
        "solver.max_iter": 6,
        "solver.warmup_iters": 2,
        "solver.lr_steps": [4],
        "train.log_period": 1,
        "train.checkpoint_period": 3,
        "train.eval_period": 0,
    }
    values.update(extra)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def tiny_cfg(data_root, **extra):
    return load_config(REPO_ROOT / "configs" / "shapes.yaml", overrides=tiny_overrides(data_root, **extra))


def train_main():
    """scripts/train.py's main(argv) -> exit status, for in-process calls."""
    return load_script("train").main


def train_argv(data_root, output_dir, *extra_args, **overrides) -> list[str]:
    """Arguments of a tiny CPU run of scripts/train.py into `output_dir`."""
    return ["--config", str(REPO_ROOT / "configs" / "shapes.yaml"), "--device", "cpu",
            "--output", str(output_dir), "--no-progress", *extra_args,
            "--opts", *tiny_overrides(data_root, **overrides)]


def signal_during_iteration(trainer, signum: int, iteration: int = 2) -> None:
    """Make `trainer` receive `signum` (from its own process) inside the loss of `iteration`, i.e.
    in the middle of that training step."""
    import os

    real, calls = trainer.criterion.forward, []

    def signalled(*args):
        calls.append(1)
        if len(calls) == iteration:
            os.kill(os.getpid(), signum)
        return real(*args)

    trainer.criterion.forward = signalled
