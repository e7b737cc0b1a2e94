"""Speed benchmarks, one section per subsystem, each against a baseline timed in the same run.

    python scripts/benchmark.py                 # every section
    python scripts/benchmark.py loss eval       # chosen sections
    python scripts/benchmark.py --quick         # fewer repetitions (smoke run)
    python scripts/benchmark.py loss postprocess --device cuda --batch-size 16
    python scripts/benchmark.py loop --device cuda --batch-size 32
    python scripts/benchmark.py data --workers 0 4 8 15
    python scripts/benchmark.py loop data compile --config configs/shapes300.yaml --device cuda
    python scripts/benchmark.py loop --opts data.num_workers=2 data.cache_images=false
    python scripts/benchmark.py datacheck        # ssd-data check's prior coverage, 16k boxes

Each section lives in scripts/benchmarks/<name>.py and defines `run(quick: bool) -> dict`,
printing its figures (times and the ratio to its baseline) and returning them. Sections whose
`run` also takes `device` / `batch_size` / `workers` / `config` / `overrides` get --device /
--batch-size / --workers / --config / --opts when those are given.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS_DIR.parent))  # run from a clone without installing
sys.path.insert(0, str(SCRIPTS_DIR))

SECTIONS = ["loss", "data", "eval", "train", "predict", "postprocess", "demo", "backbones", "loop",
            "compile", "datacheck"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("sections", nargs="*", choices=SECTIONS + [[]], default=[],
                        metavar="SECTION", help=f"any of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--device", help="device for the sections that take one (e.g. cuda)")
    parser.add_argument("--batch-size", type=int, help="batch size for the sections that take one")
    parser.add_argument("--workers", type=int, nargs="+", help="loader worker counts to time (data)")
    parser.add_argument("--config", type=Path,
                        help="shapes config for the sections that take one (loop, data, compile; "
                             "default: the demo's configs/shapes.yaml)")
    parser.add_argument("--opts", nargs="+", metavar="KEY=VALUE",
                        help="config overrides for the sections that take a config, applied after "
                             "the section's own")
    args = parser.parse_args(argv)
    logging.getLogger("ssd").setLevel(logging.WARNING)  # the figures only, not the trainer's log
    options = {"device": args.device, "batch_size": args.batch_size, "workers": args.workers,
               "config": args.config, "overrides": args.opts}
    results = {}
    for name in args.sections or SECTIONS:
        module = importlib.import_module(f"benchmarks.{name}")
        accepted = inspect.signature(module.run).parameters
        extra = {key: value for key, value in options.items() if value is not None and key in accepted}
        print(f"== {name} ==", flush=True)
        results[name] = module.run(quick=args.quick, **extra)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    from ssd.cli.common import run_cli

    run_cli(main)  # a bad --opts key or value: one `error: ...` line, exit status 2
