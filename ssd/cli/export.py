"""Export a trained SSD to ONNX (dynamic batch) or TorchScript and check the file against
PyTorch (ssd-export, or python scripts/export_onnx.py in a clone).

    ssd-export --weights runs/shapes/best.pth --output ssd7.onnx
    ssd-export --weights weights/ssd300_mAP_77.43_v2.pth --output ssd300.onnx --with-postprocess
    ssd-export --weights runs/shapes/best.pth --format torchscript --output ssd7.pt
    ssd-export --weights runs/shapes/best.pth --format openvino --output ssd7.xml   # + ssd7.bin
    ssd-export --weights runs/shapes/best.pth --int8 --calib 100 --output ssd7_int8.onnx

The model takes images float32 [B, 3, S, S]: RGB channel order, pixel values 0-255 minus the
mean pixel, not scaled (what ssd.data.BaseTransform makes of an OpenCV BGR image), and returns
boxes [B, P, 4] (x1, y1, x2, y2 normalised) and scores [B, P, C] (softmax, column 0 the
background); --with-postprocess (ONNX only) adds det_boxes, det_scores, det_labels and
num_detections (NMS by the config's test.* settings). The ONNX file's metadata_props (the
TorchScript file's extra file ssd_metadata.json) hold the class names and the pre-processing.
ssd/export.py documents every input and output.

ONNX exporters (--exporter): dynamo (needs onnxscript), torchscript, or auto (the default:
dynamo, falling back to torchscript with a warning when dynamo fails on the model). The file
is then run on a test image (a synthetic one, or --image) and its mirror, at batch 1 and 2:
under onnxruntime for ONNX, after torch.jit.load for TorchScript. Boxes and scores must match
PyTorch within --tolerance, and the detections must be those PyTorch selects from
onnxruntime's boxes and scores by the same rule; --no-check skips this. A missing optional
package (onnx, onnxscript, onnxruntime) is an error naming it and the pip command, before any
work. Exit status 1 if a difference exceeds the tolerance, 2 for bad input.

OpenVINO (--format openvino, needs the `openvino` extra): the ONNX file converted to OpenVINO
IR, NAME.xml + NAME.bin (float32 weights), the metadata in the IR's rt_info (section
ssd_metadata; ssd.deploy.read_openvino_metadata). It is checked like ONNX, run by OpenVINO
computing in float32 (its CPU default is bf16 where the CPU has it natively: ssd-benchmark
times both).

--int8 (ONNX or OpenVINO): static post-training quantization of the convolutions (int8
weights per channel, uint8 activations), their ranges measured on --calib training images of
the config (evenly spread over the training set) made into network inputs by the evaluation
transform; box decoding, softmax and NMS stay float32 (ssd/deploy.py). An INT8 file differs
from PyTorch by the quantization itself, so its check prints the differences without holding
them to --tolerance; its accuracy is the mAP that ssd-benchmark measures on the test set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssd.cli.common import (
    EXIT_USER_ERROR,
    add_version_argument,
    add_weights_arguments,
    load_cli_config,
    run_cli,
)
from ssd.deploy import DEFAULT_CALIBRATION_IMAGES

DEFAULT_TOLERANCE = 1e-4  # fp32 against fp32: ~1700 roundings of 2^-24, far above kernel noise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_weights_arguments(parser)
    parser.add_argument("--output", "--out", type=Path, default=Path("ssd300.onnx"),
                        help="output file (.onnx, or .pt for --format torchscript; default "
                             "ssd300.onnx; --out is the old spelling)")
    parser.add_argument("--format", choices=["onnx", "torchscript", "openvino"], default="onnx",
                        dest="export_format",
                        help="onnx (default), torchscript (torch.jit.trace, no post-processing) or "
                             "openvino (NAME.xml + NAME.bin)")
    parser.add_argument("--int8", action="store_true",
                        help="INT8 static quantization of the convolutions (onnx, openvino)")
    parser.add_argument("--calib", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help="training images to calibrate --int8 with (default "
                             f"{DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--with-postprocess", action="store_true",
                        help="add NMS: det_boxes, det_scores, det_labels, num_detections (ONNX)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                        help="ONNX exporter; auto: dynamo, falling back to torchscript with a "
                             "warning when dynamo fails on the model")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not run the file against PyTorch (for ONNX: no onnxruntime needed)")
    parser.add_argument("--image", type=Path, help="test image for the check (default: synthetic)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"max allowed |file - PyTorch| (default {DEFAULT_TOLERANCE:g})")
    add_version_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssd.export import required_packages
    from ssd.runtimes import MissingPackageError, require_packages

    try:  # a missing optional package: one error line before any work
        require_packages(required_packages(args.export_format, args.exporter, args.check, args.int8))
        if args.export_format == "openvino":
            require_packages(["openvino"], extra="openvino")
    except MissingPackageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return export_and_check(args)


def export_and_check(args: argparse.Namespace) -> int:
    """Build the model of --weights, write the file, check it (unless --no-check); the exit
    status."""
    from ssd.deploy import calibration_images, export_deployment
    from ssd.export import (
        ExportedSSD,
        deployment_metadata,
        export_torchscript,
        postprocess_settings,
        verify_export,
    )
    from ssd.images import load_image
    from ssd.weights import build_model_from_weights

    image = load_image(args.image) if args.image is not None else None  # bad path: fail first
    cfg = load_cli_config(args.config) if args.config else None
    model, cfg = build_model_from_weights(args.weights, cfg=cfg)
    settings = postprocess_settings(cfg) if args.with_postprocess else None
    wrapper = ExportedSSD(model, cfg.model.variances, settings).eval()
    size = cfg.model.image_size
    metadata = deployment_metadata(cfg, settings)
    if args.export_format == "torchscript":
        if args.int8:
            raise ValueError("--int8 is for --format onnx or openvino")
        export_torchscript(wrapper, size, args.output, metadata)
        how = "TorchScript, torch.jit.trace"
    else:
        calibration = calibration_images(cfg, args.calib) if args.int8 else None
        how = export_deployment(wrapper, size, args.output, args.export_format, metadata,
                                calibration, args.opset, args.exporter)
    print(f"Wrote {args.output} ({how}): images [B, 3, {size}, {size}] -> "
          f"{', '.join(wrapper.output_names())}; {len(model.priors)} priors, "
          f"{cfg.model.num_classes} classes" + (f"; NMS with {settings}" if settings else ""))
    if not args.check:
        print("Not checked against PyTorch (--no-check)")
        return 0
    differences = verify_export(wrapper, args.output, args.export_format, size, cfg.data.mean, image)
    return report(differences, args.tolerance, args.export_format, args.int8)


CHECK_RUNTIMES = {"torchscript": "torch.jit.load", "onnx": "onnxruntime", "openvino": "OpenVINO (f32)"}


def report(differences: dict[str, float], tolerance: float, export_format: str = "onnx",
           int8: bool = False) -> int:
    """Print the check's result; the exit status (1 when a difference exceeds `tolerance`;
    an INT8 file's differences are printed, not held to it)."""
    print(f"Checked with {CHECK_RUNTIMES[export_format]}: max |difference| from PyTorch at batch 1 "
          "and 2: " + ", ".join(f"{name} {value:.2e}" for name, value in differences.items()))
    if int8:
        print("INT8: differences from float32 PyTorch are the quantization's, not held to "
              "--tolerance; ssd-benchmark measures its mAP")
        return 0
    worst = max(differences.values())
    if worst > tolerance:
        print(f"FAILED: difference {worst:.2e} exceeds --tolerance {tolerance:g}")
        return 1
    print(f"OK: all within {tolerance:g}")
    return 0


if __name__ == "__main__":  # python -m ssd.cli.export, torchrun -m ssd.cli.export
    run_cli(main)
