"""Export a trained SSD to ONNX, with a dynamic batch, and check it with onnxruntime
(ssd-export, or python scripts/export_onnx.py in a clone).

    ssd-export --weights runs/shapes/best.pth --output ssd7.onnx
    ssd-export --weights weights/ssd300_mAP_77.43_v2.pth --output ssd300.onnx --with-postprocess

The model takes images float32 [B, 3, S, S] in RGB channel order minus the mean pixel (what
ssd.data.BaseTransform makes of an OpenCV BGR image) and returns boxes [B, P, 4] (x1, y1, x2,
y2 normalised) and scores [B, P, C] (softmax, column 0 the background); --with-postprocess adds
det_boxes, det_scores, det_labels and num_detections (NMS by the config's test.* settings).
ssd/export.py documents every input and output.

Exporters: the torch.export-based one (needs onnxscript) is tried first, then the TorchScript
one; --exporter picks one. Both need the onnx package. If onnxruntime is installed, the file
runs on a test image (a synthetic one, or --image) and its mirror, at batch 1 and 2: boxes and
scores must match PyTorch within --tolerance, and the detections must be those PyTorch selects
from onnxruntime's boxes and scores by the same rule. Exit status 1 if a difference exceeds the
tolerance, 2 for bad input; without onnxruntime the export is not checked (a message says so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssd.cli.common import add_version_argument, load_cli_config, run_cli

DEFAULT_TOLERANCE = 1e-4  # fp32 against fp32: ~1700 roundings of 2^-24, far above kernel noise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint or classic state_dict")
    parser.add_argument("--config", help="YAML config, used when the weights carry none "
                                         "(default: the built-in SSD300 VOC model)")
    parser.add_argument("--output", "--out", type=Path, default=Path("ssd300.onnx"),
                        help="output .onnx (default ssd300.onnx; --out is the old spelling)")
    parser.add_argument("--with-postprocess", action="store_true",
                        help="add NMS: det_boxes, det_scores, det_labels, num_detections")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                        help="auto: torch.export-based, falling back to TorchScript")
    parser.add_argument("--image", type=Path, help="test image for the check (default: synthetic)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"max allowed |onnxruntime - PyTorch| (default {DEFAULT_TOLERANCE:g})")
    add_version_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssd.export import ExportedSSD, export, postprocess_settings, verify_with_onnxruntime
    from ssd.images import load_image
    from ssd.weights import build_model_from_weights

    image = load_image(args.image) if args.image is not None else None  # bad path: fail first
    cfg = load_cli_config(args.config) if args.config else None
    model, cfg = build_model_from_weights(args.weights, cfg=cfg)
    settings = postprocess_settings(cfg) if args.with_postprocess else None
    wrapper = ExportedSSD(model, cfg.model.variances, settings).eval()
    size = cfg.model.image_size
    used = export(wrapper, size, args.output, args.opset, args.exporter)
    print(f"Wrote {args.output} ({used} exporter): images [B, 3, {size}, {size}] -> "
          f"{', '.join(wrapper.output_names())}; {len(model.priors)} priors, "
          f"{cfg.model.num_classes} classes" + (f"; NMS with {settings}" if settings else ""))
    differences = verify_with_onnxruntime(wrapper, args.output, size, cfg.data.mean, image)
    return report(differences, args.tolerance)


def report(differences: dict[str, float] | None, tolerance: float) -> int:
    """Print the check's result; the exit status (1 when a difference exceeds `tolerance`)."""
    if differences is None:
        print("onnxruntime is not installed, so the export was not checked "
              "(pip install onnxruntime, or pip install -e .[onnx])")
        return 0
    print("onnxruntime vs PyTorch, max |difference| at batch 1 and 2: "
          + ", ".join(f"{name} {value:.2e}" for name, value in differences.items()))
    worst = max(differences.values())
    if worst > tolerance:
        print(f"FAILED: difference {worst:.2e} exceeds --tolerance {tolerance:g}")
        return 1
    print(f"OK: all within {tolerance:g}")
    return 0


if __name__ == "__main__":  # python -m ssd.cli.export, torchrun -m ssd.cli.export
    run_cli(main)
