"""`loop` section: the whole training loop against its bare step, in the same run.

The loop is ``Trainer.from_config`` on a shapes config (--config; default the demo's,
configs/shapes.yaml; configs/shapes300.yaml is SSD300 for a GPU) with its real loader and
workers, reading a shapes data set generated under a temporary folder (or the config's own data
set when it is there as the config makes it); the bare step is
``Trainer.train_step`` of the same trainer (same model, optimizer, precision, channels_last) on
one fixed batch, already in memory.

What is timed: the loop's images/s is the trainer's own log-window figure (metrics.jsonl): the
wall time from the end of the previous iteration that ran a periodic action (log, checkpoint,
evaluation) to the log, so it holds the data wait, the step, the progress bar and the per-step
bookkeeping, but not the time of writing a checkpoint or evaluating (evaluation is off here).
The bare step is timed in windows of the same length with a CUDA synchronisation at each
window's ends.

The CPU's speed drifts over a run on shared machines, so the two are interleaved: each segment
times bare windows, then runs `Trainer.train` for one more window than it times (a fresh
loader each time: its first window, worker start-up included, is not timed). The ratio is the
median loop window over the median bare window; each segment's ratio pairs windows timed
within a minute of each other, and their median is printed too (less moved by drift between
segments); the per-segment ratios show the spread.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import DEMO_CONFIG, synchronize
from ssd.config import load_config
from ssd.data.loader import resolve_num_workers
from ssd.data.shapes import read_shapes_settings, shapes_settings
from ssd.engine.metrics_log import read_metrics
from ssd.engine.trainer import Trainer
from ssd.precision import batch_image_dtype

TRAIN_IMAGES = 512  # of a generated set: a few seconds to write, several epochs are not needed
WINDOW = 10  # iterations per timed window (the log period)
SEGMENTS = 5  # alternations of bare windows and loop windows
TIMED_WINDOWS_PER_SEGMENT = 3


def _overrides(config: Path, data_root: Path, batch_size: int | None, max_iter: int) -> list[str]:
    values = {
        "train.log_period": WINDOW,
        "train.eval_period": 0,
        "train.checkpoint_period": max_iter,  # only the one each segment's end writes
        "solver.max_iter": max_iter,
    }
    if not _data_present(config):
        values |= {"data.root": str(data_root), "data.shapes.num_train": TRAIN_IMAGES,
                   "data.shapes.num_test": 1}
    if batch_size:
        values["solver.batch_size"] = batch_size
    return [f"{key}={value}" for key, value in values.items()]


def _data_present(config: Path) -> bool:
    """Whether the config's own shapes data set is there, as the config would generate it (so
    it is read as it is, never regenerated)."""
    shapes = load_config(config).data
    wanted = shapes_settings(shapes.shapes.num_train, shapes.shapes.num_test, shapes.shapes.image_size,
                             shapes.shapes.seed)
    return read_shapes_settings(shapes.root) == wanted


def bare_windows(trainer: Trainer, images: torch.Tensor, targets: list[torch.Tensor],
                 windows: int) -> list[float]:
    """Images/s of `windows` windows of WINDOW bare steps on one fixed batch."""
    rates = []
    for _ in range(windows):
        synchronize(trainer.device)
        start = time.perf_counter()
        for _ in range(WINDOW):
            trainer.train_step(images, targets)
        synchronize(trainer.device)
        rates.append(WINDOW * images.shape[0] / (time.perf_counter() - start))
    return rates


def run(quick: bool = False, device: str | None = None, batch_size: int | None = None,
        config: Path = DEMO_CONFIG, overrides: list[str] | None = None) -> dict:
    """Time `config`'s training loop (with `overrides` after the section's own) against its
    bare step; print and return
    {"loop_images_per_s", "bare_images_per_s", "ratio", "data_wait_fraction",
    "segment_ratios", "segment_median_ratio", ...}."""
    segments, timed_per_segment = (2, 2) if quick else (SEGMENTS, TIMED_WINDOWS_PER_SEGMENT)
    segment_iters = (1 + timed_per_segment) * WINDOW
    with tempfile.TemporaryDirectory() as tmp:
        own = _overrides(config, Path(tmp) / "shapes", batch_size, segments * segment_iters)
        cfg = load_config(config, overrides=own + list(overrides or []))
        trainer = Trainer.from_config(cfg, output_dir=Path(tmp) / "run", device=device, progress=False)
        images, targets, _ = next(iter(trainer.make_batches(0)))
        bare_windows(trainer, images, targets, 1)  # warm-up
        bare = []
        for _ in range(segments):
            bare.append(bare_windows(trainer, images, targets, timed_per_segment))
            trainer.train(max_iter=trainer.iteration + segment_iters)
        records = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if r["kind"] == "train"]
    loop = [[] for _ in range(segments)]
    for record in records:
        segment, window = divmod((record["iteration"] - 1) // WINDOW, 1 + timed_per_segment)
        if window > 0:  # the first window of a segment starts the loader
            loop[segment].append(record)
    timed = [record for segment in loop for record in segment]

    def median_rate(records: list[dict]) -> float:
        return statistics.median(record["images_per_second"] for record in records)

    result = {"device": trainer.device.type, "batch": cfg.solver.batch_size,
              "num_workers": resolve_num_workers(cfg.data.num_workers),
              "precision": trainer.precision, "timed_loop_windows": len(timed),
              "batch_dtype": str(batch_image_dtype(cfg.data.batch_dtype, trainer.precision)),
              "loop_images_per_s": median_rate(timed),
              "bare_images_per_s": statistics.median(rate for windows in bare for rate in windows),
              "data_wait_fraction": statistics.median(r.get("data_wait_fraction", float("nan"))
                                                      for r in timed),
              "segment_ratios": [median_rate(loop_records) / statistics.median(bare_rates)
                                 for loop_records, bare_rates in zip(loop, bare)]}
    result["ratio"] = result["loop_images_per_s"] / result["bare_images_per_s"]
    result["segment_median_ratio"] = statistics.median(result["segment_ratios"])
    print(f"{Path(config).name}: {cfg.model.backbone} {cfg.model.image_size} px, batch {result['batch']}, "
          f"{result['device']} ({result['precision']}), {result['num_workers']} loader workers, "
          f"{result['batch_dtype'].removeprefix('torch.')} batches; "
          f"{segments} segments of {timed_per_segment} bare windows then {timed_per_segment} timed "
          f"loop windows, {WINDOW} iterations each; medians")
    print(f"  bare train_step (fixed batch):    {result['bare_images_per_s']:8.1f} images/s")
    print(f"  Trainer.train loop:               {result['loop_images_per_s']:8.1f} images/s "
          f"(data wait {100 * result['data_wait_fraction']:.1f}% of the window)")
    print(f"  ratio loop / bare:                {result['ratio']:8.3f} of the medians, "
          f"{result['segment_median_ratio']:.3f} median of the segments' "
          f"(per segment: {', '.join(f'{r:.3f}' for r in result['segment_ratios'])})")
    return result
