"""The embedded demo, end to end on a CPU: shapes data -> train SSD7 -> evaluate -> predict.

    python scripts/demo.py [--config configs/shapes.yaml] [--out demo_out] [--opts KEY=VALUE ...]

Runs the same commands a user would (printed before each step), so each can be repeated by
hand. The shapes data set is generated under data/shapes on first use. Running it again
resumes from the newest checkpoint in the output folder instead of training anew. --opts are
config overrides given to training and evaluation (e.g. solver.max_iter=200 for a quick run).
Every file the steps write (data set, checkpoints, evaluation, drawings) is written whole, with
ordinary permissions (0644 under umask 022). Exit status: 0, or 1 when a step failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO_ROOT  # noqa: I001  (sets up the import path)

from ssd.cli.common import run_cli
from ssd.config import load_config
from ssd.engine.checkpoint import newest_checkpoint
from ssd.fileio import path_inside


class StepFailed(RuntimeError):
    """A step's command exited with a non-zero status."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes.yaml", help="YAML config")
    parser.add_argument("--out", default="demo_out", help="where evaluation and drawings go")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for training and evaluation")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(REPO_ROOT / args.config, overrides=args.opts)
    opts = ["--opts", *args.opts] if args.opts else []
    timings = {}
    start = time.perf_counter()
    try:
        timings["train"] = run("train", ["scripts/train.py", "--config", args.config,
                                         "--resume", "auto", *opts])
        weights = newest_checkpoint(REPO_ROOT / cfg.train.output_dir)
        timings["eval"] = run("evaluate", ["scripts/eval.py", "--weights", str(weights),
                                           "--output", f"{args.out}/eval", "--overwrite", *opts])
        timings["predict"] = run("predict", ["scripts/predict.py", str(first_test_image(cfg)),
                                             "--weights", str(weights), "--output", args.out])
    except StepFailed as err:
        print(f"demo stopped: {err}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    print("\n=== demo finished: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f", total {total / 60:.1f} min")
    print(f"Per-class AP: {args.out}/eval/results.json; drawn detections: {args.out}/")
    return 0


def run(step: str, args: list[str]) -> float:
    """Run one script of scripts/ (from the repository root) and return its wall-clock
    seconds; raises StepFailed when it fails."""
    command = [sys.executable, *args]
    print(f"\n=== {step}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise StepFailed(f"'{' '.join(args)}' failed with exit status {result.returncode}")
    return time.perf_counter() - start


def first_test_image(cfg) -> Path:
    """The first image of the config's first test split."""
    root = REPO_ROOT / cfg.data.root / f"VOC{cfg.data.test_sets[0][0]}"
    split = root / "ImageSets" / "Main" / f"{cfg.data.test_sets[0][1]}.txt"
    image_id = split.read_text().split()[0]
    return path_inside(root / "JPEGImages", f"{image_id}.jpg", f"first image id of {split}")


if __name__ == "__main__":
    run_cli(main)
