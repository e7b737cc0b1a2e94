"""The command-line programs, installed as commands by `pip install .`:

    ssd-train        ssd.cli.train        (python scripts/train.py in a clone)
    ssd-eval         ssd.cli.eval         (python scripts/eval.py)
    ssd-predict      ssd.cli.predict      (python scripts/predict.py)
    ssd-export       ssd.cli.export       (python scripts/export_onnx.py)
    ssd-visualize    ssd.cli.visualize    (python scripts/visualize.py)
    ssd-convert      ssd.cli.convert      (python scripts/convert_dataset.py)
    ssd-make-shapes  ssd.cli.make_shapes  (python scripts/make_shapes.py)
    ssd-data         ssd.cli.data         (python scripts/data.py)

Each module has `main(argv) -> exit status` (for in-process calls); the installed commands
are the *_command functions below (named apart from the modules), which run it through
`ssd.cli.common.run_cli` (errors as `error: ...`, exit status 2).
"""

import importlib

from ssd.cli.common import run_cli


def _run(module: str) -> None:
    run_cli(importlib.import_module(f"ssd.cli.{module}").main)


def train_command() -> None:
    """The ssd-train command."""
    _run("train")


def eval_command() -> None:
    """The ssd-eval command."""
    _run("eval")


def predict_command() -> None:
    """The ssd-predict command."""
    _run("predict")


def export_command() -> None:
    """The ssd-export command."""
    _run("export")


def visualize_command() -> None:
    """The ssd-visualize command."""
    _run("visualize")


def convert_command() -> None:
    """The ssd-convert command."""
    _run("convert")


def make_shapes_command() -> None:
    """The ssd-make-shapes command."""
    _run("make_shapes")


def data_command() -> None:
    """The ssd-data command."""
    _run("data")
