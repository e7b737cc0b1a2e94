"""ssd.system.keep_freed_memory: freed blocks stay in the process, so a repeated step stops
faulting its pages in; it stands aside for other C libraries, the user's own malloc settings
and the opt-out variable."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from ssd.system import KEEP_FREED_MEMORY_ENV, keep_freed_memory

STEP_MIB = 48 + 20 + 20 + 64  # the tensors one step of REFILL allocates
PAGES_PER_MIB = 256  # 4 KiB pages
WARM_STEPS, MEASURED_STEPS = 8, 2

# Repeats a step that allocates, fills and frees tensors of several sizes above glibc's
# largest dynamic mmap threshold (32 MiB), like a training step, and prints the minor page
# faults of the last steps: pages given back to the system must be faulted in again.
REFILL = f"""
import resource, torch
from ssd.system import keep_freed_memory
applied = keep_freed_memory()
def step():
    a = torch.ones(48 * 2**18)
    b = torch.ones(20 * 2**18)
    c = a[: 20 * 2**18] + b
    d = torch.ones(64 * 2**18)
    return float(c[0] + d[0])
for _ in range({WARM_STEPS}):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({MEASURED_STEPS}):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

needs_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def _refill(env_changes: dict[str, str | None]) -> tuple[bool, int]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("MALLOC_") and name != "GLIBC_TUNABLES"}
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run([sys.executable, "-c", REFILL], env=env, capture_output=True, text=True,
                          check=True)
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@needs_glibc
def test_repeated_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    pages = MEASURED_STEPS * STEP_MIB * PAGES_PER_MIB
    applied, faults = _refill({KEEP_FREED_MEMORY_ENV: None})
    assert applied and faults < pages // 20
    # glibc's default: blocks above its mmap threshold come and go with the system, though
    # how many depends on what its heap happens to hold (a fifth to all of them, measured).
    applied, faults = _refill({KEEP_FREED_MEMORY_ENV: "0"})
    assert not applied and faults > pages // 8


@needs_glibc
@pytest.mark.parametrize("name, value", [("MALLOC_TRIM_THRESHOLD_", "1000000"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")])
def test_the_users_own_malloc_settings_win(name, value):
    applied, _ = _refill({name: value})
    assert not applied


def test_opting_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(KEEP_FREED_MEMORY_ENV, "0")
    assert keep_freed_memory() is False
