"""Evaluate a trained SSD on the test split of its data set.

    python scripts/eval.py --weights weights/ssd300_mAP_77.43_v2.pth
    python scripts/eval.py --weights runs/shapes/best.pth --metric voc10 --batch-size 16

The config comes from the checkpoint when it carries one, else from --config, else
configs/voc300.yaml. Writes to --output (default: eval/<weights name>/):
    results.json                 per-class AP, mAP, settings, timing
    comp4_det_test_<class>.txt   detections in the VOC results format (1-based pixels)
    pr_curves.png                precision-recall curve per class (VOC metrics)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import REPO_ROOT, pick_device, run_cli  # noqa: I001  (sets up the import path)

from ssd.config import load_config, merge_overrides
from ssd.fileio import atomic_write

DEFAULT_CONFIG = REPO_ROOT / "configs" / "voc300.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint or classic state_dict (.pth)")
    parser.add_argument("--config", help="YAML config, used when the weights carry none "
                                         f"(default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("--metric", choices=["voc07", "voc10", "coco"],
                        help="voc07 (11-point), voc10 (area), coco (default: test.metric)")
    parser.add_argument("--conf-threshold", type=float, help="minimum class score (default 0.01)")
    parser.add_argument("--nms-threshold", type=float, help="NMS IoU threshold (default 0.45)")
    parser.add_argument("--top-k", type=int, help="detections kept per image (default 200)")
    parser.add_argument("--batch-size", type=int, help="images per inference batch")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="inference precision (default fp32, the reference numbers)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--output", type=Path, help="output folder (default eval/<weights name>)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def flag_overrides(args) -> list[str]:
    """The command-line flags as config overrides (each flag given wins over the config)."""
    pairs = {"test.metric": args.metric, "test.conf_threshold": args.conf_threshold,
             "test.nms_threshold": args.nms_threshold, "test.top_k": args.top_k,
             "test.batch_size": args.batch_size}
    return [f"{key}={value}" for key, value in pairs.items() if value is not None]


def main(argv=None) -> int:
    args = parse_args(argv)
    from ssd.data import build_dataset, build_transform, make_test_loader
    from ssd.engine.inference import evaluate_model
    from ssd.weights import build_model_from_weights

    fallback = load_config(args.config or DEFAULT_CONFIG)
    model, cfg = build_model_from_weights(args.weights, cfg=fallback)
    cfg = merge_overrides(cfg, [*args.opts, *flag_overrides(args)])
    device = pick_device(args.device)
    dataset = build_dataset(cfg, train=False)
    loader = make_test_loader(dataset, build_transform(cfg, train=False),
                              batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers)
    model.to(device)
    result = evaluate_model(model, dataset, loader, device, cfg.test, cfg.model.variances,
                            precision=args.precision, progress=not args.no_progress)
    out_dir = args.output or Path("eval") / Path(args.weights).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    print_table(result, cfg.test.metric)
    write_outputs(out_dir, dataset, result, cfg, args)
    print(f"Wrote results.json{' and VOC result files + pr_curves.png' if cfg.test.metric != 'coco' else ''}"
          f" to {out_dir}")
    return 0


def print_table(result: dict, metric: str) -> None:
    if metric == "coco":
        for name, value in result["coco"].items():
            print(f"{name:>6s}  {value:.4f}")
        return
    width = max([len(name) for name in result["ap"]] + [8])
    print(f"{'class':<{width}s}  {'AP':>6s}")
    for name, ap in result["ap"].items():
        excluded = name in result.get("excluded", [])
        print(f"{name:<{width}s}  {'  n/a' if excluded else f'{ap:.4f}'}"
              f"{'  (no ground truth: excluded from mAP)' if excluded else ''}")
    print(f"{'mAP':<{width}s}  {result['mAP']:.4f}  ({metric})")


def write_outputs(out_dir: Path, dataset, result: dict, cfg, args) -> None:
    from ssd.engine.inference import detections_to_pixels
    from ssd.evaluation import plot_pr_curves, write_voc_results

    summary = {
        "weights": str(args.weights),
        "metric": cfg.test.metric,
        "mAP": result["mAP"],
        "ap": {name: _finite_or_none(ap) for name, ap in result.get("ap", {}).items()},
        "coco": result.get("coco"),
        "excluded": list(result.get("excluded", [])),
        "settings": {**cfg.test.to_dict(), "precision": args.precision,
                     "image_size": cfg.model.image_size, "num_images": len(dataset)},
        "timing": result["timing"],
    }
    atomic_write(out_dir / "results.json", json.dumps(summary, indent=2))
    if cfg.test.metric != "coco":
        pixel_dets = detections_to_pixels(dataset, result["detections"])
        write_voc_results(pixel_dets, list(pixel_dets), list(dataset.class_names), out_dir)
        plot_pr_curves(result, out_dir / "pr_curves.png")


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a class excluded from the mean (no ground truth) is written as null."""
    return None if value != value else float(value)



if __name__ == "__main__":
    run_cli(main)
