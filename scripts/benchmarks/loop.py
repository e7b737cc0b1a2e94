"""`loop` section: the whole training loop against its bare step, in the same run.

The loop is ``Trainer.from_config`` on the demo config (configs/shapes.yaml) with its real
loader and workers, reading a shapes data set generated under a temporary folder (or the demo's
own data/shapes when it is there as the config makes it); the bare step is
``Trainer.train_step`` of the same trainer (same model, optimizer, precision, channels_last) on
one fixed batch, already in memory.

What is timed: the loop's images/s is the trainer's own log-window figure (metrics.jsonl): the
wall time from the end of the previous iteration that ran a periodic action (log, checkpoint,
evaluation) to the log, so it holds the data wait, the step, the progress bar and the per-step
bookkeeping, but not the time of writing a checkpoint or evaluating (evaluation is off here,
checkpoints are rarer than the run). The first windows (worker start-up, first iterations) are
warm-up. The bare step is timed in windows of the same length, before and after the loop (the
CPU is shared: the median of all windows), with a CUDA synchronisation at each window's ends.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from ssd.config import load_config
from ssd.data.shapes import read_shapes_settings, shapes_settings
from ssd.engine.metrics_log import read_metrics
from ssd.engine.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

CONFIG = CONFIGS / "shapes.yaml"  # the demo config
TRAIN_IMAGES = 512  # of a generated set: a few seconds to write, several epochs are not needed
WINDOW = 10  # iterations per timed window (the log period)


def _overrides(data_root: Path, batch_size: int | None, windows: int, warmup: int) -> list[str]:
    values = {
        "train.log_period": WINDOW,
        "train.eval_period": 0,
        "train.checkpoint_period": (warmup + windows) * WINDOW * 10,  # never during the run
        "solver.max_iter": (warmup + windows) * WINDOW,
    }
    if not _demo_data_present():
        values |= {"data.root": str(data_root), "data.shapes.num_train": TRAIN_IMAGES,
                   "data.shapes.num_test": 1}
    if batch_size:
        values["solver.batch_size"] = batch_size
    return [f"{key}={value}" for key, value in values.items()]


def _demo_data_present() -> bool:
    """Whether the demo config's own shapes data set is there, as the config would generate it
    (so it is read as it is, never regenerated)."""
    shapes = load_config(CONFIG).data
    wanted = shapes_settings(shapes.shapes.num_train, shapes.shapes.num_test, shapes.shapes.image_size,
                             shapes.shapes.seed)
    return read_shapes_settings(shapes.root) == wanted


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_windows(trainer: Trainer, images: torch.Tensor, targets: list[torch.Tensor],
                 windows: int) -> list[float]:
    """Images/s of `windows` windows of WINDOW bare steps on one fixed batch."""
    rates = []
    for _ in range(windows):
        _sync(trainer.device)
        start = time.perf_counter()
        for _ in range(WINDOW):
            trainer.train_step(images, targets)
        _sync(trainer.device)
        rates.append(WINDOW * images.shape[0] / (time.perf_counter() - start))
    return rates


def run(quick: bool = False, device: str | None = None, batch_size: int | None = None) -> dict:
    """Print and return {"loop_images_per_s", "bare_images_per_s", "ratio", "data_wait_fraction"}."""
    windows, warmup = (3, 1) if quick else (8, 2)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(CONFIG, overrides=_overrides(Path(tmp) / "shapes", batch_size, windows, warmup))
        trainer = Trainer.from_config(cfg, output_dir=Path(tmp) / "run", device=device, progress=False)
        images, targets, _ = next(iter(trainer.make_batches(0)))
        bare_windows(trainer, images, targets, warmup)  # warm-up
        bare = bare_windows(trainer, images, targets, (windows + 1) // 2)
        trainer.train()
        bare += bare_windows(trainer, images, targets, windows // 2)
        records = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if r["kind"] == "train"]
    timed = records[warmup:]
    loop = statistics.median(r["images_per_second"] for r in timed)
    wait = statistics.median(r.get("data_wait_fraction", float("nan")) for r in timed)
    result = {"device": trainer.device.type, "batch": cfg.solver.batch_size,
              "num_workers": trainer.num_workers if hasattr(trainer, "num_workers") else cfg.data.num_workers,
              "precision": trainer.precision, "loop_images_per_s": loop,
              "bare_images_per_s": statistics.median(bare), "data_wait_fraction": wait}
    result["ratio"] = result["loop_images_per_s"] / result["bare_images_per_s"]
    print(f"{CONFIG.name}: {cfg.model.backbone} {cfg.model.image_size} px, batch {result['batch']}, "
          f"{result['device']} ({result['precision']}), {result['num_workers']} loader workers; "
          f"{len(timed)} loop windows and {len(bare)} bare windows of {WINDOW} iterations, median")
    print(f"  bare train_step (fixed batch): {result['bare_images_per_s']:8.1f} images/s")
    print(f"  Trainer.train loop:            {result['loop_images_per_s']:8.1f} images/s "
          f"(data wait {100 * wait:.1f}% of the window)")
    print(f"  ratio loop / bare:             {result['ratio']:8.3f}")
    return result
