"""One trained SSD in every CPU runtime: file size, milliseconds per image, mAP.

    runtimes = build_runtimes(model, cfg, RUNTIMES, work_dir, calibration)
    timings = time_runtimes(runtimes, cfg.model.image_size, batch_sizes=(1, 8))
    mAP = runtime_map(runtime, cfg)                 # through ssd-eval's evaluation code
    print(format_table(rows))

Every runtime runs the same network, `ssd.export.ExportedSSD` without NMS: images [B, 3, S, S]
-> boxes [B, P, 4], scores [B, P, C]. The ONNX and OpenVINO files are those ssd-export writes
(`ssd.deploy.export_deployment`). Timing: after warm-up, every runtime runs one batch per round,
round after round (round-robin, so a slow spell of a shared machine falls on all of them); the
median over the rounds, divided by the batch size, is the figure, min and max its spread.
mAP: `ssd.engine.inference.evaluate_model`, as ssd-eval runs it, on the config's test set; the
runtime's boxes and scores are handed to the PyTorch post-processing as the network outputs
that decode to them (`RuntimeNetwork`), so NMS, top-k and the metric are the same code for
every runtime and only the network differs.
"""

from __future__ import annotations

import copy
import io
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ssd.box_utils import encode
from ssd.export import ExportedSSD, example_batch, export, synthetic_image
from ssd.precision import autocast_context, cpu_has_native_bf16, prepare_for_inference
from ssd.runtimes import MissingPackageError

logger = logging.getLogger(__name__)

RUNTIMES = ("pytorch-fp32", "pytorch-fast", "torch-compile", "onnxruntime-fp32",
            "onnxruntime-int8", "openvino-fp32", "openvino", "openvino-int8")
RUNTIME_DESCRIPTIONS = {
    "pytorch-fp32": "PyTorch, float32",
    "pytorch-fast": "PyTorch fast path (bf16 autocast + channels_last)",
    "torch-compile": "torch.compile of the fast path (of float32 without native bf16)",
    "onnxruntime-fp32": "ONNX Runtime, float32 ONNX",
    "onnxruntime-int8": "ONNX Runtime, INT8 QDQ ONNX",
    "openvino-fp32": "OpenVINO, float32 IR computed in f32",
    "openvino": "OpenVINO, float32 IR at the CPU plugin's default precision",
    "openvino-int8": "OpenVINO, INT8 IR (from the QDQ ONNX)",
}
DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_ROUNDS = 10
DEFAULT_WARMUP = 2

RunFunction = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Runtime:
    """One way of running the network: `run(images [B, 3, S, S]) -> (boxes [B, P, 4], scores
    [B, P, C])` float32, or `skipped` (the reason) when it cannot run here."""

    name: str
    run: RunFunction | None = None
    file_bytes: int | None = None
    precision: str = ""
    skipped: str | None = None
    timings: dict[int, dict[str, float]] = field(default_factory=dict)
    mAP: float | None = None


# ------------------------------------------------------------------------------ runtimes
def build_runtimes(model: nn.Module, cfg, names, work_dir: Path,
                   calibration: torch.Tensor | None) -> list[Runtime]:
    """The runtimes `names` (of RUNTIMES) for `model` (eval mode, CPU); the files are written
    to `work_dir`. `calibration` [N, 3, S, S]: the INT8 files' calibration images (None:
    the INT8 runtimes are skipped). A runtime whose package is missing is skipped, its reason
    the missing package's one-line message."""
    files = _DeploymentFiles(model, cfg, work_dir, calibration)
    runtimes = []
    for name in names:
        try:
            runtimes.append(_BUILDERS[name](model, cfg, files))
        except MissingPackageError as err:
            runtimes.append(Runtime(name, skipped=str(err)))
        except _Skip as err:
            runtimes.append(Runtime(name, skipped=str(err)))
    return runtimes


class _Skip(Exception):
    """This runtime cannot run here (the message says why)."""


class _DeploymentFiles:
    """The ONNX / OpenVINO files of the model, each written once on first use."""

    def __init__(self, model, cfg, work_dir: Path, calibration):
        self.wrapper = ExportedSSD(model, cfg.model.variances).eval()
        self.cfg, self.work_dir, self.calibration = cfg, Path(work_dir), calibration
        self.paths: dict[str, Path] = {}

    def path(self, kind: str) -> Path:
        """"onnx", "onnx-int8", "openvino" or "openvino-int8": the file (.onnx or .xml)."""
        if kind not in self.paths:
            self.paths[kind] = self._write(kind)
        return self.paths[kind]

    def _write(self, kind: str) -> Path:
        from ssd.deploy import quantize_onnx, to_openvino
        from ssd.export import deployment_metadata, read_onnx_metadata

        if kind.endswith("int8") and self.calibration is None:
            raise _Skip("no calibration images (--calib 0)")
        if kind == "onnx":
            out = self.work_dir / "model.onnx"
            export(self.wrapper, self.cfg.model.image_size, out,
                   metadata=deployment_metadata(self.cfg, None))
        elif kind == "onnx-int8":
            out = self.work_dir / "model_int8.onnx"
            quantize_onnx(self.path("onnx"), out, self.calibration)
        else:
            source = self.path("onnx-int8" if kind == "openvino-int8" else "onnx")
            out = self.work_dir / f"{kind.replace('-', '_')}.xml"
            to_openvino(source, out, read_onnx_metadata(source))
        return out


def _torch_runtime(wrapper: nn.Module, precision: str) -> RunFunction:
    """`wrapper` run under `precision`'s autocast and memory format (ssd.precision)."""
    channels_last = precision != "fp32"

    @torch.inference_mode()
    def run(images: torch.Tensor):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context("cpu", precision):
            boxes, scores = wrapper(images)
        return boxes.float(), scores.float()

    return run


def _fast_precision() -> str:
    if not cpu_has_native_bf16():
        raise _Skip("this CPU has no native bfloat16 (AVX-512 BF16 / AMX): the fast path is float32")
    return "bf16"


def _pytorch(name: str, model, cfg, precision: str, compile_it: bool = False) -> Runtime:
    model = prepare_for_inference(copy.deepcopy(model), "cpu", precision)
    wrapper = ExportedSSD(model, cfg.model.variances).eval()
    if compile_it:
        wrapper = torch.compile(wrapper)
    return Runtime(name, _torch_runtime(wrapper, precision), _state_dict_bytes(model), precision)


def _state_dict_bytes(model: nn.Module) -> int:
    """Bytes of torch.save(model.state_dict()): what a PyTorch deployment ships."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _numpy_runtime(run_numpy) -> RunFunction:
    """A runtime taking ndarrays (ONNX Runtime, OpenVINO) as a RunFunction."""
    def run(images: torch.Tensor):
        boxes, scores = run_numpy(np.ascontiguousarray(images.numpy()))[:2]
        return torch.from_numpy(np.asarray(boxes)), torch.from_numpy(np.asarray(scores))

    return run


def _onnxruntime(name: str, kind: str):
    def build(model, cfg, files) -> Runtime:
        from ssd.deploy import file_size
        from ssd.runtimes import onnxruntime_runner

        path = files.path(kind)
        return Runtime(name, _numpy_runtime(onnxruntime_runner(path, spin=False)), file_size(path),
                       "int8" if kind.endswith("int8") else "fp32")
    return build


def _openvino(name: str, kind: str, precision: str | None):
    def build(model, cfg, files) -> Runtime:
        from ssd.deploy import file_size
        from ssd.runtimes import openvino_runner, require_packages

        require_packages(["openvino"], extra="openvino")  # before any file is written
        path = files.path(kind)
        run_numpy = openvino_runner(path, precision)
        label = f"int8 + {run_numpy.precision}" if kind.endswith("int8") else run_numpy.precision
        return Runtime(name, _numpy_runtime(run_numpy), file_size(path), label)
    return build


_BUILDERS = {
    "pytorch-fp32": lambda model, cfg, files: _pytorch("pytorch-fp32", model, cfg, "fp32"),
    "pytorch-fast": lambda model, cfg, files: _pytorch("pytorch-fast", model, cfg, _fast_precision()),
    "torch-compile": lambda model, cfg, files: _pytorch(
        "torch-compile", model, cfg, "bf16" if cpu_has_native_bf16() else "fp32", compile_it=True),
    "onnxruntime-fp32": _onnxruntime("onnxruntime-fp32", "onnx"),
    "onnxruntime-int8": _onnxruntime("onnxruntime-int8", "onnx-int8"),
    "openvino-fp32": _openvino("openvino-fp32", "openvino", "f32"),
    "openvino": _openvino("openvino", "openvino", None),
    "openvino-int8": _openvino("openvino-int8", "openvino-int8", None),
}


# -------------------------------------------------------------------------------- timing
def benchmark_images(image_size: int, mean, batch_size: int) -> torch.Tensor:
    """[batch_size, 3, S, S] network inputs of the synthetic test image and its mirror."""
    pair = example_batch(synthetic_image(image_size), image_size, mean)  # [2, 3, S, S]
    return pair.repeat((batch_size + 1) // 2, 1, 1, 1)[:batch_size].contiguous()


def time_runtimes(runtimes: list[Runtime], image_size: int, mean, batch_sizes=DEFAULT_BATCH_SIZES,
                  rounds: int = DEFAULT_ROUNDS, warmup: int = DEFAULT_WARMUP) -> None:
    """Fill each runnable runtime's `timings[batch]` with median_ms, min_ms and max_ms per
    image over `rounds` round-robin rounds (one batch per runtime per round), after `warmup`
    calls each."""
    active = [runtime for runtime in runtimes if runtime.skipped is None]
    for batch_size in batch_sizes:
        images = benchmark_images(image_size, mean, batch_size)
        for runtime in active:
            for _ in range(warmup):
                runtime.run(images)
        seconds: dict[str, list[float]] = {runtime.name: [] for runtime in active}
        for _ in range(rounds):
            for runtime in active:
                start = time.perf_counter()
                runtime.run(images)
                seconds[runtime.name].append(time.perf_counter() - start)
        for runtime in active:
            per_image = [1000 * value / batch_size for value in seconds[runtime.name]]
            runtime.timings[batch_size] = {"median_ms": statistics.median(per_image),
                                           "min_ms": min(per_image), "max_ms": max(per_image)}


# ----------------------------------------------------------------------------------- mAP
class RuntimeNetwork(nn.Module):
    """A runtime as the network `ssd.engine.inference.predict_batches` expects: forward(images
    [B, 3, S, S]) -> loc [B, P, 4], conf [B, P, C] such that decoding loc with `priors` gives
    the runtime's boxes and softmax of conf its scores (loc = encode(boxes), conf = log(scores),
    both to float32 rounding), so the PyTorch post-processing runs on the runtime's outputs."""

    def __init__(self, run: RunFunction, priors: torch.Tensor, variances):
        super().__init__()
        self.run, self.variances = run, tuple(variances)
        self.register_buffer("priors", priors.detach().clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.run(images.contiguous())
        return encode(boxes, self.priors, self.variances), scores.log()


def runtime_map(runtime: Runtime, model: nn.Module, cfg, dataset, loader) -> float | None:
    """The test-set mAP of `runtime` by ssd-eval's evaluation (`evaluate_model`, fp32
    post-processing, the config's test.* settings and metric)."""
    from ssd.engine.inference import evaluate_model
    from ssd.postprocess import build_postprocessor

    network = RuntimeNetwork(runtime.run, model.priors, cfg.model.variances)
    result = evaluate_model(network, dataset, loader, "cpu", build_postprocessor(cfg),
                            cfg.test.metric, progress=False)
    value = result["mAP"]
    return float(value) if value is not None and np.isfinite(value) else None


# --------------------------------------------------------------------------------- report
def format_table(runtimes: list[Runtime], batch_sizes, reference: str = "pytorch-fp32") -> str:
    """A Markdown table: runtime, precision, file MB, ms per image (median, min-max) per batch
    size, images/s and speed-up over `reference` at the largest batch, mAP; skipped runtimes
    last with their reason."""
    largest = max(batch_sizes)
    base = next((r.timings.get(largest, {}).get("median_ms") for r in runtimes
                 if r.name == reference and r.skipped is None), None)
    header = (["runtime", "precision", "file MB"] + [f"ms/image b{b} (min-max)" for b in batch_sizes]
              + [f"images/s b{largest}", f"vs {reference}", "mAP"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for runtime in runtimes:
        if runtime.skipped is not None:
            continue
        cells = [runtime.name, runtime.precision, f"{runtime.file_bytes / 1e6:.2f}"]
        for batch in batch_sizes:
            t = runtime.timings[batch]
            cells.append(f"{t['median_ms']:.2f} ({t['min_ms']:.2f}-{t['max_ms']:.2f})")
        median = runtime.timings[largest]["median_ms"]
        cells += [f"{1000 / median:.1f}", f"{base / median:.2f}x" if base else "n/a",
                  f"{runtime.mAP:.4f}" if runtime.mAP is not None else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    for runtime in runtimes:
        if runtime.skipped is not None:
            lines.append(f"skipped {runtime.name}: {runtime.skipped}")
    return "\n".join(lines)


def results_dictionary(runtimes: list[Runtime], **context) -> dict:
    """JSON-ready results: `context` (weights, config, CPU, threads, ...) and one row per
    runtime (name, description, precision, file_bytes, timings per batch size, mAP, skipped)."""
    rows = [{"name": r.name, "description": RUNTIME_DESCRIPTIONS[r.name], "precision": r.precision,
             "file_bytes": r.file_bytes, "mAP": r.mAP, "skipped": r.skipped,
             "timings": {str(batch): values for batch, values in r.timings.items()}}
            for r in runtimes]
    return {**context, "runtimes": rows}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
