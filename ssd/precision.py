"""Which numeric precision runs where: the one rule for training, inference and benchmarks.

Precisions are named "fp32", "bf16" and "fp16" everywhere. CUDA gets float16 autocast; a CPU gets
bfloat16 autocast only when it computes bf16 in hardware (AVX-512 BF16 or AMX), because other
CPUs emulate it several times slower than float32; anything else runs in float32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NATIVE_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX-512 BF16 or AMX (bf16 matmuls run in hardware).

    Read once from /proc/cpuinfo (Linux); elsewhere False, so the default stays fp32.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & _NATIVE_BF16_CPU_FLAGS)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when available else CPU.

    Raises:
        ValueError: CUDA is asked for but not available (the message says to use cpu).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine; use cpu")
    return device


def default_precision(device: torch.device | str) -> str:
    """The fastest safe precision for `device`: fp16 on CUDA, bf16 on CPUs with native bf16,
    else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def training_precision(amp: bool, device: torch.device | str) -> str:
    """The precision `train.amp` gives on `device`: fp32 when amp is off, else
    `default_precision` (which logs why a CPU without native bf16 stays in fp32)."""
    device = torch.device(device)
    if not amp:
        return "fp32"
    precision = default_precision(device)
    if precision == "fp32":
        logger.warning("train.amp: this %s has no native bfloat16; training in float32", device.type)
    return precision


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ValueError unless `precision` is known and runs on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")


def autocast_context(device: torch.device | str, precision: str):
    """An autocast context for `precision` on `device` (fp32: no autocast)."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


BATCH_DTYPES = ("auto", "float32", "float16")  # the values of data.batch_dtype


def batch_image_dtype(setting: str, precision: str) -> torch.dtype:
    """The dtype training batches carry their images in (`data.batch_dtype`): "float32",
    "float16", or "auto": float16 when the step runs `precision` "fp16" (its autocast rounds the
    images to float16 at the first convolution, so sending them rounded changes nothing there
    and halves the bytes), else float32."""
    if setting == "auto":
        return torch.float16 if precision == "fp16" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16}[setting]


def uses_channels_last(precision: str) -> bool:
    """Reduced precisions run fastest with channels_last activations; fp32 keeps the default
    layout (so fp32 results do not depend on the speed path)."""
    return precision != "fp32"


def enable_cudnn_autotune(device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the
    fastest (the detectors' input size is fixed, so it times them once); elsewhere nothing."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def prepare_for_inference(model: nn.Module, device, precision: str) -> nn.Module:
    """eval mode on `device`; channels_last memory format unless fp32 (then the default
    contiguous format, also for a model an earlier call made channels_last). In place.
    On CUDA it also turns on cuDNN's algorithm autotuning (`enable_cudnn_autotune`)."""
    enable_cudnn_autotune(device)
    memory_format = torch.channels_last if uses_channels_last(precision) else torch.contiguous_format
    return model.to(device).eval().to(memory_format=memory_format)


def precision_label(precision: str) -> str:
    """Human-readable name for logs: 'float32', 'bfloat16 autocast', 'float16 autocast'."""
    return {"fp32": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}[precision]
