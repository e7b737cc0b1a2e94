"""Evaluate a trained SSD on the test split of its data set (ssd-eval, or python
scripts/eval.py in a clone).

    ssd-eval --weights weights/ssd300_mAP_77.43_v2.pth
    ssd-eval --weights runs/shapes/best.pth --metric voc10 --batch-size 16
    ssd-eval --weights runs/shapes/best.pth --precision auto   # the fast path

The config comes from the checkpoint when it carries one, else from --config, else
configs/voc300.yaml (the file in the working directory, else the built-in one with its data
folder data/VOCdevkit relative to the working directory). Writes to --output (default: eval/<weights name>/):
    results.json                 per-class AP, mAP, settings, skipped images, timing (strict
                                 JSON: a metric without countable ground truth is null); with
                                 --metric coco also "coco": AP, AP50, AP75, APs, APm, APl, AR
    comp4_det_test_<class>.txt   detections in the VOC results format (1-based pixels); a class
                                 name that is not a plain file name (a path separator, a
                                 leading dot) is written without them, tagged with its hash
    pr_curves.png                precision-recall curve per class (VOC metrics)

--metric coco works on every data set format: a COCO set is scored against its annotation
file, any other against its ground truth in COCO form (see ssd.evaluation.dataset_eval).

Precision: fp32 by default (the reference numbers); bf16 / fp16 run the network under
autocast; auto picks the fastest safe one for the device (fp16 on CUDA, bf16 on CPUs with
native bfloat16, else fp32). Post-processing always runs in float32.

Classes are matched by name: the checkpoint's class list (data.class_names of its config) is
compared with the evaluated data set's, and the model's class k is scored as the data set's
class of the same name (same names in another order are translated; with the VOC metrics a
data set with more or fewer classes is scored on the common ones; no common name is an
error). One line is logged when a translation is applied.

With data.skip_bad=true, test images that cannot be read are left out of the evaluation
(their ground truth is not counted) and named in the summary.

Exit status: 0 when a mAP was computed; 1 when the evaluation ran but no class has countable
(non-difficult) ground truth in the evaluated images, so the mAP is n/a (null in
results.json; the outputs are still written); 2 for bad input (missing weights, empty test
split, ...) and for an output folder that cannot be written (checked before the evaluation
runs) or a full disk, reported as "error: ..." without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ssd.cli.common import add_version_argument, load_cli_config, pick_device, run_cli
from ssd.config import merge_overrides
from ssd.fileio import atomic_write, check_writable_folder
from ssd.precision import PRECISIONS

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/voc300.yaml"
AUTO_PRECISION = "auto"
NO_GROUND_TRUTH = "n/a (no ground truth)"
EXIT_NO_MAP = 1  # the evaluation ran, but no class had countable ground truth


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint or classic state_dict (.pth)")
    parser.add_argument("--config", help="YAML config, used when the weights carry none "
                                         f"(default: {DEFAULT_CONFIG})")
    parser.add_argument("--metric", choices=["voc07", "voc10", "coco"],
                        help="voc07 (11-point), voc10 (area), coco (default: test.metric)")
    parser.add_argument("--conf-threshold", type=float,
                        help="minimum class score (default: test.score_threshold)")
    parser.add_argument("--nms-threshold", type=float,
                        help="NMS IoU threshold (default: test.nms_threshold)")
    parser.add_argument("--top-k", type=int, help="detections kept per image (default: test.top_k)")
    parser.add_argument("--batch-size", type=int, help="images per inference batch")
    parser.add_argument("--precision", choices=[*PRECISIONS, AUTO_PRECISION], default="fp32",
                        help="inference precision (default fp32, the reference numbers; auto: the "
                             "fastest safe one for the device)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (compiling takes seconds to minutes; pays "
                             "off on large test sets on a GPU)")
    parser.add_argument("--output", type=Path, help="output folder (default eval/<weights name>)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_version_argument(parser)
    return parser.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The command-line flags as config overrides (each flag given wins over the config)."""
    pairs = {"test.metric": args.metric, "test.score_threshold": args.conf_threshold,
             "test.nms_threshold": args.nms_threshold, "test.top_k": args.top_k,
             "test.batch_size": args.batch_size}
    return [f"{key}={value}" for key, value in pairs.items() if value is not None]


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    from ssd.data import build_dataset, build_transform
    from ssd.engine.inference import check_has_images, evaluate_model, make_eval_loader
    from ssd.evaluation.voc_results import results_file_names
    from ssd.postprocess import build_postprocessor
    from ssd.precision import default_precision, prepare_for_inference
    from ssd.weights import build_model_from_weights

    out_dir = args.output or Path("eval") / Path(args.weights).stem
    fallback = load_cli_config(args.config or DEFAULT_CONFIG)
    model, model_cfg = build_model_from_weights(args.weights, cfg=fallback)
    model_classes = model_class_names(model_cfg, args.weights)
    cfg = merge_overrides(model_cfg, [*args.opts, *flag_overrides(args)])
    device = pick_device(args.device)
    precision = default_precision(device) if args.precision == AUTO_PRECISION else args.precision
    dataset = build_dataset(cfg, train=False)
    if cfg.test.metric != "coco":
        results_file_names(dataset.class_names)  # a class name no file can have: fail before inference
    loader = make_eval_loader(dataset, build_transform(cfg, train=False),
                              batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers,
                              pin_memory=device.startswith("cuda"))
    check_has_images(dataset)  # bad input first: no output folder is made for it
    check_writable_folder(out_dir)  # before the evaluation, not after it
    model = prepare_for_inference(model, device, precision)
    if args.compile:
        model = torch.compile(model)
    result = evaluate_model(model, dataset, loader, device, build_postprocessor(cfg),
                            cfg.test.metric, precision=precision, progress=not args.no_progress,
                            class_names=model_classes)
    skipped = skipped_files(dataset, result)
    print_skipped(skipped)
    print_table(result, cfg.test.metric)
    timing = result["timing"]
    print(f"{timing['images']} images in {timing['inference_seconds']:.1f} s: "
          f"{timing['images_per_second']:.1f} images/s ({precision}, {device})")
    write_outputs(out_dir, dataset, result, cfg, args, precision, skipped)
    names = "results.json" + (" and VOC result files + pr_curves.png"
                               if cfg.test.metric != "coco" else "")
    print(f"Wrote {names} to {out_dir}")
    return 0 if _is_number(result["mAP"]) else EXIT_NO_MAP


def model_class_names(model_cfg, weights: str) -> list[str] | None:
    """The class names the weights were trained on (their config's), or None (logged) when
    their config does not name them: then the model's class k is scored as the data set's k."""
    from ssd.data import known_class_names

    names = known_class_names(model_cfg)
    if names is None:
        logger.warning("%s does not name its classes (data.class_names); its class k is scored as "
                       "the data set's class k", weights)
    return names


def skipped_files(dataset, result: dict) -> list[tuple[str, str]]:
    """(path, message) of every test file left out: bad when the data set was loaded, and
    images that could not be read during inference."""
    at_load = [(str(path), message) for path, message in dataset.report.skipped_files]
    at_read = [(image.path, image.message) for image in result.get("skipped", [])]
    return at_load + at_read


def print_skipped(skipped: list[tuple[str, str]]) -> None:
    print(f"skipped {len(skipped)} file{'' if len(skipped) == 1 else 's'}"
          + (" (left out of the evaluation: their ground truth is not counted):"
             if skipped else ""))
    for path, message in skipped:
        print(f"  {path}: {message}")


def print_table(result: dict, metric: str) -> None:
    """Per-class AP and the mAP; a value without countable ground truth is explained."""
    if metric == "coco":
        for name, value in result["coco"].items():
            if name != "per_class":
                print(f"{name:>6s}  {value:.4f}" if value >= 0 else f"{name:>6s}  {NO_GROUND_TRUTH}")
    else:
        width = max([len(name) for name in result["ap"]] + [8])
        print(f"{'class':<{width}s}  {'AP':>6s}")
        for name, ap in result["ap"].items():
            shown = f"{ap:.4f}" if _is_number(ap) else f"{NO_GROUND_TRUTH}: excluded from the mAP"
            print(f"{name:<{width}s}  {shown}")
    if _is_number(result["mAP"]):
        print(f"{'mAP':<8s}  {result['mAP']:.4f}  ({metric})")
    else:
        print(f"mAP  n/a ({metric}): no class has countable ground truth in the evaluated images "
              "(every object is difficult, or there are none); exit status "
              f"{EXIT_NO_MAP}")


def write_outputs(out_dir: Path, dataset, result: dict, cfg, args, precision: str,
                  skipped: list[tuple[str, str]]) -> None:
    """results.json (strict JSON), and for VOC metrics the results files and pr_curves.png."""
    from ssd.evaluation import plot_pr_curves, write_voc_results
    from ssd.evaluation.dataset_eval import detections_to_pixels

    summary = {
        "weights": str(args.weights),
        "metric": cfg.test.metric,
        "mAP": result["mAP"],
        "ap": result.get("ap", {}),
        "coco": _coco_stats(result.get("coco")),
        "excluded": list(result.get("excluded", [])),
        "skipped": [{"path": path, "message": message} for path, message in skipped],
        "settings": {**cfg.test.to_dict(), "precision": precision,
                     "image_size": cfg.model.image_size, "num_images": result["timing"]["images"],
                     "num_images_listed": len(dataset)},
        "timing": result["timing"],
    }
    text = json.dumps(_finite_or_null(summary), indent=2, allow_nan=False)
    atomic_write(out_dir / "results.json", text)
    if cfg.test.metric != "coco":
        pixel_dets = detections_to_pixels(dataset, result["detections"])
        write_voc_results(pixel_dets, list(pixel_dets), list(dataset.class_names), out_dir)
        plot_pr_curves(result, out_dir / "pr_curves.png")


def _coco_stats(stats: dict | None) -> dict | None:
    """COCO's -1 ("nothing to score") as NaN, which results.json writes as null."""
    if stats is None:
        return None
    return {name: (value if name == "per_class" or value >= 0 else math.nan)
            for name, value in stats.items()}


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers (a metric without countable ground truth)
    become null, anywhere in nested dicts and lists."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _is_number(value: float) -> bool:
    return value is not None and math.isfinite(value)


if __name__ == "__main__":  # python -m ssd.cli.eval, torchrun -m ssd.cli.eval
    run_cli(main)
