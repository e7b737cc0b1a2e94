"""The optional runtimes of exported models: which package each needs, the pip command that
installs it, and functions that run an exported file.

    require_packages(["onnxruntime"])           # MissingPackageError naming it and the command
    run = onnxruntime_runner(Path("ssd.onnx"))  # images [B, 3, S, S] float32 -> outputs
    run = openvino_runner(Path("ssd.xml"), "f32")

A leaf module (it imports nothing of the package but ``ssd`` itself): the exporter
(`ssd.export`), the deployment formats (`ssd.deploy`) and the benchmark all use it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import numpy as np

import ssd

INPUT_NAME = "images"  # the exported network's input (ssd.export)
# What each optional package is needed for (the error names it).
PACKAGE_USES = {"onnx": "writing ONNX files", "onnxscript": "the dynamo ONNX exporter",
                "onnxruntime": "checking the ONNX file (--no-check skips it)",
                "openvino": "writing and running OpenVINO models"}


class MissingPackageError(ImportError):
    """An optional package the export needs is not installed (the message says how to get it)."""


def install_command(extra: str = "onnx") -> str:
    """The pip command that installs the package's `extra`: editable in a clone (the package
    folder sits next to setup.py), else from the installed distribution."""
    root = Path(ssd.__file__).resolve().parent.parent
    if (root / "setup.py").is_file():
        return f'pip install -e ".[{extra}]" (in {root})'
    return f'pip install "ssd[{extra}]"'


def require_packages(packages: Sequence[str], extra: str = "onnx") -> None:
    """Raise MissingPackageError, one line naming every missing package of `packages`, what
    it is needed for and the install command of the package's `extra`; nothing when all
    import."""
    missing = [name for name in packages if not _importable(name)]
    if missing:
        uses = "; ".join(f"{name} for {PACKAGE_USES.get(name, 'the export')}" for name in missing)
        raise MissingPackageError(f"missing package{'s' if len(missing) > 1 else ''} {uses}: "
                                  f"{install_command(extra)}", name=missing[0])


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def onnxruntime_runner(path: Path, spin: bool = True):
    """A function running the ONNX file `path` under onnxruntime's CPU provider: images
    ndarray [B, 3, S, S] float32 -> the list of outputs (as `ExportedSSD.output_names`).
    spin=False: its threads sleep between calls instead of spinning (onnxruntime's default),
    which would take the cores from other work timed in between."""
    require_packages(["onnxruntime"])
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {INPUT_NAME: images})


def openvino_runner(xml_path: Path, precision: str | None = None):
    """A function running the OpenVINO IR `xml_path` on the CPU: images ndarray [B, 3, S, S]
    float32 -> the list of outputs in the model's order. `precision`: the CPU plugin's
    INFERENCE_PRECISION_HINT ("f32" computes in float32; None: the plugin's default, bf16 on
    CPUs with native bf16). The function's `precision` attribute says which one runs."""
    require_packages(["openvino"], extra="openvino")
    import openvino

    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = openvino.Core().compile_model(str(xml_path), "CPU", config)
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> list[np.ndarray]:
        results = request.infer({INPUT_NAME: images})
        return [results[output] for output in compiled.outputs]

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    run.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    return run
