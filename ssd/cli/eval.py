"""Evaluate a trained SSD on the test split of its data set (ssd-eval, or python
scripts/eval.py in a clone).

    ssd-eval --weights weights/ssd300_mAP_77.43_v2.pth
    ssd-eval --weights runs/shapes/best.pth --metric voc10 --batch-size 16
    ssd-eval --weights runs/shapes/best.pth --config mine.yaml   # on mine.yaml's data and classes
    ssd-eval --weights runs/shapes/best.pth --precision auto   # the fast path

Which config is used (logged in one line at the start):
  - the weights store a config (this project's checkpoints), no --config: that stored config,
    then --opts, then the flags (--metric, --score-threshold, ...): the data set, classes and
    model the weights were trained with;
  - --config C with such a checkpoint: C, then --opts, then the flags. The model, the data set
    and the class list are C's (C's model must be the checkpoint's architecture: backbone,
    image size, priors), and the weights are loaded into C's model as fine-tuning does
    (ssd.transfer: classes matched by name or model.class_map; a class of C the checkpoint
    does not know keeps its initial weights). This evaluates a detector on another data set
    or class list (a permuted or smaller one) before fine-tuning it;
  - weights without a config (a classic state_dict): --config, else configs/voc300.yaml (the
    file in the working directory, else the built-in one with its data folder data/VOCdevkit
    relative to the working directory), then --opts, then the flags.

Writes to --output (default: eval/<run folder>_<weights stem>/, e.g. eval/shapes_best/ for
runs/shapes/best.pth). A folder that holds an earlier evaluation is refused (exit status 2):
choose another with --output DIR, or replace it with --overwrite (its earlier result files are
deleted once the new evaluation has run). The files:
    results.json                 per-class AP, mAP, settings, skipped images, timing (strict
                                 JSON: a metric without countable ground truth is null); with
                                 --metric coco also "coco": AP, AP50, AP75, APs, APm, APl, AR
    comp4_det_test_<class>.txt   detections in the VOC results format (1-based pixels); a class
                                 name that is not a plain file name (a path separator, a
                                 leading dot) is written without them, tagged with its hash
    pr_curves.png                precision-recall curve per class (VOC metrics)
    confusion_matrix.png/.json   true class x predicted class with a background row and column,
                                 at the best-F1 score threshold (see ssd.evaluation.analysis)
    thresholds.png               precision, recall and F1 versus score threshold, per class and
                                 over all classes; the best-F1 threshold is in results.json

The images with the most errors (false positives + misses + wrong classes) at the best-F1
threshold are printed and listed in results.json ("worst_images"): start there when looking
for label mistakes.

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
import logging
import math
from pathlib import Path

import torch

from ssd.cli.common import add_version_argument, load_cli_config, pick_device, run_cli
from ssd.config import merge_overrides
from ssd.evaluation.report import coco_stats as _coco_stats  # noqa: F401 (tests use the names)
from ssd.evaluation.report import finite_or_null as _finite_or_null  # noqa: F401
from ssd.fileio import check_writable_folder
from ssd.precision import PRECISIONS

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/voc300.yaml"
AUTO_PRECISION = "auto"
NO_GROUND_TRUTH = "n/a (no ground truth)"
EXIT_NO_MAP = 1  # the evaluation ran, but no class had countable ground truth
EVAL_ROOT = "eval"  # default outputs: eval/<run folder>_<weights stem>/
RESULT_PATTERNS = ("results.json", "comp4_det_test_*.txt", "pr_curves.png")  # an evaluation's files
LISTED_FILES = 3  # earlier result files named in the refusal


class EvalOutputError(ValueError):
    """The output folder holds an earlier evaluation (a user error: choose another or overwrite)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint or classic state_dict (.pth)")
    parser.add_argument("--config", help="YAML config: its data set and class list, onto which "
                                         "the weights are transferred (default: the weights' "
                                         f"own config, else {DEFAULT_CONFIG})")
    parser.add_argument("--metric", choices=["voc07", "voc10", "coco"],
                        help="voc07 (11-point), voc10 (area), coco (default: test.metric)")
    parser.add_argument("--score-threshold", "--conf-threshold", type=float,
                        help="minimum class score of a detection (default: test.score_threshold; "
                             "--conf-threshold is the old spelling)")
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
    parser.add_argument("--output", type=Path,
                        help="output folder (default eval/<run folder>_<weights name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier evaluation in the output folder")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_version_argument(parser)
    return parser.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The command-line flags as config overrides (each flag given wins over the config)."""
    pairs = {"test.metric": args.metric, "test.score_threshold": args.score_threshold,
             "test.nms_threshold": args.nms_threshold, "test.top_k": args.top_k,
             "test.batch_size": args.batch_size}
    return [f"{key}={value}" for key, value in pairs.items() if value is not None]


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    from ssd.data import build_transform
    from ssd.engine.inference import check_has_images, evaluate_model, make_eval_loader
    from ssd.evaluation.report import print_best_f1, print_worst_images
    from ssd.evaluation.voc_results import results_file_names
    from ssd.postprocess import build_postprocessor
    from ssd.precision import default_precision, prepare_for_inference

    out_dir = args.output or default_output_dir(args.weights)
    refuse_earlier_results(out_dir, args.overwrite)  # before any heavy work
    model, cfg, dataset, model_classes = load_model_and_data(args)
    device = pick_device(args.device)
    precision = default_precision(device) if args.precision == AUTO_PRECISION else args.precision
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
    print_best_f1(result["analysis"]["best_f1"])
    print_worst_images(result["analysis"]["worst_images"])
    timing = result["timing"]
    print(f"{timing['images']} images in {timing['inference_seconds']:.1f} s: "
          f"{timing['images_per_second']:.1f} images/s ({precision}, {device})")
    if args.overwrite:
        remove_earlier_results(out_dir)
    write_outputs(out_dir, dataset, result, cfg, args, precision, skipped)
    names = ("results.json, confusion_matrix.png/.json, thresholds.png"
             + (", pr_curves.png and VOC result files" if cfg.test.metric != "coco" else ""))
    print(f"Wrote {names} to {out_dir}")
    return 0 if _is_number(result["mAP"]) else EXIT_NO_MAP


# ------------------------------------------------------------------------ output folder
def default_output_dir(weights: str | Path) -> Path:
    """eval/<run folder>_<weights stem>: runs/shapes/best.pth -> eval/shapes_best, so that the
    best.pth of two runs get two folders."""
    path = Path(weights).resolve()
    run = path.parent.name
    return Path(EVAL_ROOT) / (f"{run}_{path.stem}" if run else path.stem)


def earlier_results(out_dir: Path) -> list[Path]:
    """The files of an earlier evaluation in `out_dir` (results.json, VOC result files,
    pr_curves.png), sorted; [] when there is none."""
    if not out_dir.is_dir():
        return []
    return sorted(path for pattern in RESULT_PATTERNS for path in out_dir.glob(pattern)
                  if path.is_file())


def refuse_earlier_results(out_dir: Path, overwrite: bool) -> None:
    """EvalOutputError when `out_dir` holds an earlier evaluation and `overwrite` is not set."""
    existing = earlier_results(out_dir)
    if existing and not overwrite:
        shown = ", ".join(path.name for path in existing[:LISTED_FILES])
        more = ", ..." if len(existing) > LISTED_FILES else ""
        raise EvalOutputError(
            f"{out_dir} holds an earlier evaluation ({shown}{more}); "
            f"choose another folder with --output DIR, or replace it with --overwrite")


def remove_earlier_results(out_dir: Path) -> None:
    """--overwrite: delete the earlier evaluation's files, so that none of them (a class no
    longer evaluated) is mistaken for part of the new one."""
    removed = earlier_results(out_dir)
    for path in removed:
        path.unlink()
    if removed:
        logger.info("--overwrite: deleted the earlier evaluation in %s (%d files)", out_dir,
                    len(removed))


# ------------------------------------------------------------------------ config and model
def load_model_and_data(args: argparse.Namespace):
    """The model, the config used, the test set and the model's class names (label order, or
    None when unknown; see `model_class_names`), by the precedence of the module docstring.

    Returns:
        (model in eval mode on the CPU, config, test set, model class names or None).
    """
    from ssd.weights import read_checkpoint

    state_dict, stored = read_checkpoint(args.weights)
    if stored is not None and args.config:
        return _transferred_model_and_data(args, state_dict, stored)
    return _checkpoint_model_and_data(args, state_dict, stored)


def _checkpoint_model_and_data(args, state_dict, stored):
    """The weights loaded strictly into the model of their own config (else --config, else
    the default config); --opts and the flags change the evaluation settings."""
    from ssd.config import load_checkpoint_config
    from ssd.data import build_dataset
    from ssd.modeling import build_model
    from ssd.weights import load_model_weights

    if stored is not None:
        model_cfg = load_checkpoint_config(stored, source=f"the config stored in {args.weights}")
        used = f"the config stored in {args.weights}"
    else:
        model_cfg = load_cli_config(args.config or DEFAULT_CONFIG)
        used = f"{args.config or DEFAULT_CONFIG} ({args.weights} stores no config)"
    model = build_model(model_cfg)
    load_model_weights(model, state_dict, source=str(args.weights))
    model_classes = model_class_names(model_cfg, args.weights)
    cfg = merge_overrides(model_cfg, [*args.opts, *flag_overrides(args)])
    logger.info("Config: %s%s", used, _overrides_note(args))
    return model.eval(), cfg, build_dataset(cfg, train=False), model_classes


def _transferred_model_and_data(args, state_dict, stored):
    """--config with a checkpoint that stores its own config: the model, data set and class list
    of --config (and --opts), the weights loaded into it as fine-tuning does (`ssd.transfer`:
    classes matched by name or model.class_map; a class the checkpoint lacks keeps its initial
    weights)."""
    from ssd.data import build_dataset
    from ssd.data.build import class_names_for
    from ssd.modeling import build_model
    from ssd.weights import transfer_checkpoint

    cfg = load_cli_config(args.config, overrides=[*args.opts, *flag_overrides(args)])
    dataset = build_dataset(cfg, train=False)
    class_names = list(dataset.class_names)
    if len(class_names) != cfg.model.num_classes - 1:
        class_names = class_names_for(cfg)
    logger.info("Config: %s%s (data set, %d classes, model, test settings); weights from %s, "
                "whose stored config is not used: transferred to these classes by name",
                args.config, _overrides_note(args), len(class_names), args.weights)
    model = build_model(cfg)
    class_map = cfg.model.class_map.to_dict() if cfg.model.class_map is not None else None
    transfer_checkpoint(model, state_dict, stored, str(args.weights), class_names, class_map)
    return model.eval(), cfg, dataset, class_names


def _overrides_note(args: argparse.Namespace) -> str:
    """' with --opts/flags a=1 b=2' for the config log line, or ''."""
    overrides = [*args.opts, *flag_overrides(args)]
    return f", then {' '.join(overrides)}" if overrides else ""


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
    """results.json (strict JSON), the analysis pictures, and for VOC metrics the results files
    and pr_curves.png (see ssd.evaluation.report)."""
    from ssd.evaluation import write_voc_results
    from ssd.evaluation.dataset_eval import detections_to_pixels
    from ssd.evaluation.report import results_dictionary, write_evaluation_report

    summary = results_dictionary(
        result,
        weights=str(args.weights),
        metric=cfg.test.metric,
        skipped=[{"path": path, "message": message} for path, message in skipped],
        settings={**cfg.test.to_dict(), "precision": precision,
                  "image_size": cfg.model.image_size, "num_images": result["timing"]["images"],
                  "num_images_listed": len(dataset)},
        timing=result["timing"],
    )
    write_evaluation_report(out_dir, result, summary)
    if cfg.test.metric != "coco":
        pixel_dets = detections_to_pixels(dataset, result["detections"])
        write_voc_results(pixel_dets, list(pixel_dets), list(dataset.class_names), out_dir)


def _is_number(value: float) -> bool:
    return value is not None and math.isfinite(value)


if __name__ == "__main__":  # python -m ssd.cli.eval, torchrun -m ssd.cli.eval
    run_cli(main)
