"""Look at a data set before training on it (ssd-data, or python scripts/data.py in a clone).

    ssd-data check --config configs/voc300.yaml
    ssd-data check --config my.yaml --output data_check --fit-priors

check reads the training and test sets as training does (data.format's reader, with
data.skip_bad so that every bad file is counted) and reports, in a table and in
<output>/data_report.json: images, objects per class, images without objects, missing,
unreadable and truncated images, degenerate (dropped) and clipped boxes, difficult objects,
duplicate boxes; the box shapes per class (<output>/box_shapes.png, box_centres.png); and how
well the priors cover the boxes: the share whose best prior IoU reaches loss.iou_threshold (the
others are matched only through the forced best-prior rule), per class and size, and the mean
number of positive priors per box. --fit-priors searches prior sizes and aspect ratios that
cover more training boxes and prints them as a model.priors block to paste into the config.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ssd.cli.common import add_version_argument, load_cli_config, run_cli
from ssd.prior_coverage import SIZE_BUCKET_LIMITS

DEFAULT_OUTPUT = "data_check"
REPORT_FILE = "data_report.json"
SHAPES_PLOT = "box_shapes.png"
CENTRES_PLOT = "box_centres.png"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="report what the data set holds and whether the "
                                              "priors cover its objects")
    check.add_argument("--config", default="configs/voc300.yaml",
                       help="YAML config file, or a built-in one (default configs/voc300.yaml)")
    check.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                       help="config overrides, e.g. data.root=data/mine")
    check.add_argument("--output", default=DEFAULT_OUTPUT,
                       help=f"folder for {REPORT_FILE} and the plots (default {DEFAULT_OUTPUT})")
    check.add_argument("--fit-priors", action="store_true",
                       help="propose prior sizes and aspect ratios that cover more boxes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return check_command(args)


def check_command(args) -> int:
    """`ssd-data check`: build both sets, check them, print the table, write the report."""
    from ssd.config import merge_overrides
    from ssd.data import build_dataset
    from ssd.data.check import check_dataset, json_ready
    from ssd.data.check_plots import plot_box_centres, plot_box_shapes
    from ssd.fileio import atomic_write
    from ssd.modeling.derived import resolve_priors
    from ssd.priors import priors_from_config

    cfg = merge_overrides(load_cli_config(args.config, overrides=args.opts), ["data.skip_bad=true"])
    cfg = resolve_priors(cfg)
    image_size, threshold = cfg.model.image_size, cfg.loss.iou_threshold
    priors = priors_from_config(cfg.model.priors, image_size)
    output = Path(args.output)
    results = {}
    for split, train in (("train", True), ("test", False)):
        dataset = build_dataset(cfg, train=train)
        results[split] = check_dataset(dataset, priors, image_size, threshold)
        print_split(split, results[split], dataset.class_names)
    training = results["train"]
    names = list(training["objects_per_class"])
    boxes, labels = training["boxes"].numpy(), training["labels"]
    plot_box_shapes(boxes, labels, names, image_size, output / SHAPES_PLOT)
    plot_box_centres(boxes, labels, names, output / CENTRES_PLOT)
    report = {"config": str(args.config), "image_size": image_size, "iou_threshold": threshold,
              "priors": cfg.model.priors.to_dict(), "num_priors": len(priors),
              "splits": {split: json_ready(result) for split, result in results.items()}}
    if args.fit_priors:
        report["fit_priors"] = fit_and_print(training["boxes"], cfg, threshold)
    atomic_write(output / REPORT_FILE, json.dumps(_without_nan(report), indent=2))
    print(f"Wrote {output / REPORT_FILE}, {output / SHAPES_PLOT} and {output / CENTRES_PLOT}")
    return 0


def fit_and_print(boxes, cfg, threshold: float) -> dict:
    """`fit_prior_settings` on the training boxes [N, 4]; prints the coverage before and after
    and the model.priors block to paste. Returns the JSON part of the report."""
    from ssd.prior_coverage import fit_prior_settings
    from ssd.priors import prior_settings_yaml

    current = cfg.model.priors.to_dict()
    fit = fit_prior_settings(boxes, current, cfg.model.image_size, threshold)
    print(f"\nPrior fit on {len(boxes)} training boxes: coverage (best prior IoU >= {threshold}) "
          f"before {fit.before:.4f}, after {fit.after:.4f}")
    if not fit.improved:
        print("No prior settings found that cover more boxes: keep the current model.priors.")
    else:
        print("Paste into the config (the model's heads keep their shapes):\n")
        print(prior_settings_yaml({k: v for k, v in fit.settings.items() if k != "clip"}), end="")
    return {"before": fit.before, "after": fit.after, "improved": fit.improved,
            "settings": fit.settings}


def print_split(split: str, result: dict, class_names) -> None:
    """The table of one set: a row per class, then the file and box counts."""
    coverage = result["coverage"]
    print(f"\n== {split}: {result['name']} ==")
    header = (f"{'class':<16}{'objects':>9}{'difficult':>10}{'med w':>8}{'med h':>8}"
              f"{'med w/h':>9}{'covered':>9}{'pos/box':>9}")
    print(header)
    for name in class_names:
        shapes = result["box_shapes"].get(name, {})
        per_class = coverage["per_class"].get(name, {})
        print(f"{name:<16}{result['objects_per_class'][name]:>9}{result['difficult_per_class'][name]:>10}"
              f"{_median(shapes, 'width'):>8}{_median(shapes, 'height'):>8}{_median(shapes, 'aspect'):>9}"
              f"{_number(per_class.get('covered')):>9}{_number(per_class.get('mean_positive_priors')):>9}")
    print(f"{'all':<16}{result['objects']:>9}{result['difficult_objects']:>10}{'':>25}"
          f"{_number(coverage['covered']):>9}{_number(coverage['mean_positive_priors']):>9}")
    sizes = ", ".join(f"{bucket} {_number(coverage['per_size'][bucket]['covered'])} of "
                      f"{coverage['per_size'][bucket]['boxes']}"
                      for bucket, _ in SIZE_BUCKET_LIMITS if bucket in coverage["per_size"])
    print(f"coverage by size (best prior IoU >= {coverage['iou_threshold']}): {sizes or 'no boxes'}")
    print(f"images {result['images']}, without objects {result['images_without_objects']}, "
          f"missing {result['missing_images']}, unreadable {result['unreadable_images']}, "
          f"truncated {result['truncated_images']}, size differs from annotation "
          f"{result['image_size_mismatches']}")
    print(f"boxes: degenerate (dropped) {result['degenerate_boxes']}, clipped to the image "
          f"{result['clipped_boxes']}, duplicate {result['duplicate_boxes']}, difficult "
          f"{result['difficult_objects']}")


def _median(shapes: dict, key: str) -> str:
    return f"{shapes[key]['median']:.3g}" if key in shapes else "-"


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _without_nan(value):
    """`value` with every NaN float (a share of no boxes) as None, nested dicts and lists too."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


if __name__ == "__main__":  # python -m ssd.cli.data
    run_cli(main)
