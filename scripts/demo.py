"""The embedded demo, end to end on a CPU: shapes data -> train SSD7 -> evaluate -> predict.

    python scripts/demo.py [--config configs/shapes.yaml] [--out demo_out]

Runs the same commands a user would (printed before each step), so each can be repeated by
hand. The shapes data set is generated under data/shapes on first use. Running it again
resumes from the newest checkpoint in the output folder instead of training anew.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO_ROOT  # noqa: I001  (sets up the import path)

from ssd.config import load_config
from ssd.engine.checkpoint import newest_checkpoint


def run(step: str, args: list[str]) -> float:
    """Run one script of scripts/ and return its wall-clock seconds; stop the demo on failure."""
    command = [sys.executable, *args]
    print(f"\n=== {step}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT)
    if result.returncode != 0:
        sys.exit(f"demo stopped: '{' '.join(args)}' failed with exit status {result.returncode}")
    return time.perf_counter() - start


def first_test_image(cfg) -> Path:
    root = REPO_ROOT / cfg.data.root / f"VOC{cfg.data.test_sets[0][0]}"
    split = root / "ImageSets" / "Main" / f"{cfg.data.test_sets[0][1]}.txt"
    image_id = split.read_text().split()[0]
    return root / "JPEGImages" / f"{image_id}.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--out", default="demo_out", help="where evaluation and drawings go")
    args = parser.parse_args()
    cfg = load_config(REPO_ROOT / args.config)
    run_dir = Path(cfg.train.output_dir)
    timings = {}
    start = time.perf_counter()
    timings["train"] = run("train", ["scripts/train.py", "--config", args.config, "--resume", "auto"])
    weights = newest_checkpoint(REPO_ROOT / run_dir)
    timings["eval"] = run("evaluate", ["scripts/eval.py", "--weights", str(weights),
                                       "--output", f"{args.out}/eval"])
    image = first_test_image(cfg)
    timings["predict"] = run("predict", ["scripts/predict.py", str(image), "--weights", str(weights),
                                         "--out", args.out])
    total = time.perf_counter() - start
    print("\n=== demo finished: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f", total {total / 60:.1f} min")
    print(f"Per-class AP: {args.out}/eval/results.json; drawn detections: {args.out}/")


if __name__ == "__main__":
    main()
