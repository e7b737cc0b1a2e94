"""Time and score one trained SSD in every CPU runtime (ssd-benchmark): file size, ms per image
at each batch size, images/s, and the test-set mAP.

    ssd-benchmark --weights runs/shapes/best.pth
    ssd-benchmark --weights ssd300.pth --config configs/shapes300.yaml --batch-sizes 8 --no-map
    ssd-benchmark --weights runs/shapes/best.pth --formats pytorch-fp32 openvino-int8

Runtimes (--formats, default all): pytorch-fp32; pytorch-fast (bf16 autocast + channels_last,
only on CPUs with native bf16); torch-compile (of the fast path); onnxruntime-fp32 and
onnxruntime-int8 (the files of ssd-export and ssd-export --int8); openvino-fp32 (computed in
f32), openvino (the CPU plugin's default precision: bf16 on CPUs with native bf16) and
openvino-int8 (the INT8 QDQ file read by OpenVINO). A runtime whose package is missing is
listed as skipped with the reason and the install command.

Timing: after warm-up, each runtime runs one batch per round, round after round, all in this
process; the median per image over --rounds rounds is the figure, min-max its spread. mAP: the
evaluation of ssd-eval on the config's test set (fp32 post-processing in PyTorch on each
runtime's boxes and scores: only the network differs); --no-map skips it (random weights, or no
test set). INT8 calibration uses --calib training images of the config.

Prints a Markdown table and writes the results as JSON to --output (default
deploy_benchmark.json). Exit status 0, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ssd.cli.common import add_version_argument, add_weights_arguments, load_cli_config, run_cli
from ssd.deploy import DEFAULT_CALIBRATION_IMAGES
from ssd.deploy_benchmark import DEFAULT_BATCH_SIZES, DEFAULT_ROUNDS, DEFAULT_WARMUP, RUNTIMES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_weights_arguments(parser)
    parser.add_argument("--formats", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                        metavar="RUNTIME", help=f"runtimes to compare (default all: {' '.join(RUNTIMES)})")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(DEFAULT_BATCH_SIZES),
                        metavar="B", help="batch sizes to time (default 1 8)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"timed round-robin rounds per batch size (default {DEFAULT_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed calls per runtime first (default {DEFAULT_WARMUP})")
    parser.add_argument("--calib", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help=f"INT8 calibration images (default {DEFAULT_CALIBRATION_IMAGES}; "
                             "0: no INT8 rows)")
    parser.add_argument("--no-map", dest="map", action="store_false",
                        help="do not evaluate the mAP on the test set")
    parser.add_argument("--output", type=Path, default=Path("deploy_benchmark.json"),
                        help="JSON results file (default deploy_benchmark.json)")
    add_version_argument(parser)
    args = parser.parse_args(argv)
    check_counts(args)
    return args


def check_counts(args: argparse.Namespace) -> None:
    """Raise ValueError naming the option for a batch size, round count or calibration count
    out of range."""
    if any(size < 1 for size in args.batch_sizes):
        raise ValueError(f"--batch-sizes {args.batch_sizes}: expected sizes of at least 1")
    if args.rounds < 1 or args.warmup < 0:
        raise ValueError(f"--rounds {args.rounds} --warmup {args.warmup}: expected rounds >= 1 "
                         "and warmup >= 0")
    if args.calib < 0:
        raise ValueError(f"--calib {args.calib}: expected a count >= 0")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssd.deploy import calibration_images
    from ssd.deploy_benchmark import (
        build_runtimes,
        cpu_model,
        format_table,
        results_dictionary,
        runtime_map,
        time_runtimes,
    )
    from ssd.fileio import atomic_write, check_writable_folder
    from ssd.weights import build_model_from_weights

    check_writable_folder(args.output.resolve().parent)  # before the work, not after it
    cfg = load_cli_config(args.config) if args.config else None
    model, cfg = build_model_from_weights(args.weights, cfg=cfg)
    needs_int8 = any(name.endswith("int8") for name in args.formats) and args.calib > 0
    calibration = calibration_images(cfg, args.calib) if needs_int8 else None
    evaluation = _evaluation_data(cfg) if args.map else None
    with tempfile.TemporaryDirectory(prefix="ssd-benchmark-") as work_dir:
        runtimes = build_runtimes(model, cfg, args.formats, Path(work_dir), calibration)
        time_runtimes(runtimes, cfg.model.image_size, cfg.data.mean, args.batch_sizes,
                      args.rounds, args.warmup)
        for runtime in runtimes:
            if evaluation is not None and runtime.skipped is None:
                runtime.mAP = runtime_map(runtime, model, cfg, *evaluation)
    print(f"{args.weights}: {cfg.model.backbone} at {cfg.model.image_size} px on {cpu_model()}, "
          f"{torch.get_num_threads()} threads; median ms per image over {args.rounds} rounds")
    print(format_table(runtimes, args.batch_sizes))
    results = results_dictionary(runtimes, weights=str(args.weights), backbone=cfg.model.backbone,
                                 image_size=cfg.model.image_size, cpu=cpu_model(),
                                 threads=torch.get_num_threads(), batch_sizes=args.batch_sizes,
                                 rounds=args.rounds, warmup=args.warmup,
                                 metric=cfg.test.metric if args.map else None)
    atomic_write(args.output, json.dumps(results, indent=2) + "\n")
    print(f"Wrote {args.output}")
    return 0


def _evaluation_data(cfg):
    """(test set, evaluation loader) of `cfg`, as ssd-eval makes them."""
    from ssd.data import build_dataset, build_transform
    from ssd.engine.inference import check_has_images, make_eval_loader

    dataset = build_dataset(cfg, train=False)
    check_has_images(dataset)
    loader = make_eval_loader(dataset, build_transform(cfg, train=False),
                              batch_size=cfg.test.batch_size, num_workers=0)
    return dataset, loader


if __name__ == "__main__":  # python -m ssd.cli.benchmark
    run_cli(main)
