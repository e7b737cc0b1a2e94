"""What this machine offers the process (the cores it may run on, the memory available) and
how the process uses its memory (`keep_freed_memory`)."""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
# mallopt parameters of glibc's malloc.h.
M_TRIM_THRESHOLD = -1  # free memory at the heap top above this is returned; -1: never
M_MMAP_MAX = -4  # how many blocks may be served by mmap at once; 0: none
NO_TRIMMING = -1
# Set to 0 to leave glibc's malloc as it is (see keep_freed_memory).
KEEP_FREED_MEMORY_ENV = "SSD_KEEP_FREED_MEMORY"


def usable_cores() -> int:
    """The cores this process may run on (os.sched_getaffinity where the system has it, else
    os.cpu_count()), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def available_memory_bytes(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None where the system does not say (not Linux)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of giving it back to the system.

    PyTorch's CPU tensors come from malloc. By default glibc serves large blocks with mmap and
    unmaps them when they are freed, and trims the heap top, so each training step faults the
    pages of its activations and gradients in again, and the kernel zeroes every 4 KiB page.
    With mmap off for allocations and no trimming (mallopt), freed blocks are reused. On a
    2-core AMD EPYC: the demo config's train step 291-302 -> 378-383 images/s, the SSD300 fp32
    step at batch 8 4.69 -> 3.78 s, system time per benchmark run 11-16 s -> 1.3-1.6 s. The
    cost: the process keeps its peak memory until it exits, and that peak was 9% (demo) and
    22% (SSD300) higher.

    The commands call this at start. It does nothing and returns False where the C library is
    not glibc, where the environment already tunes glibc's malloc (MALLOC_*_ variables or
    glibc.malloc in GLIBC_TUNABLES), or when SSD_KEEP_FREED_MEMORY=0.

    Returns:
        True when the settings were applied.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0" or _malloc_tuned_by_environment():
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NO_TRIMMING))


def _malloc_tuned_by_environment() -> bool:
    """Whether the environment sets glibc malloc tunables that keep_freed_memory would override."""
    return (any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""))
