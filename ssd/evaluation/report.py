"""An evaluation's outputs in one folder: results.json (every number of the tables and the
pictures), pr_curves.png, confusion_matrix.png / .json and thresholds.png; written by ssd-eval
and by each evaluation during training.

    summary = results_dictionary(result, weights="best.pth")
    write_evaluation_report(out_dir, result, summary)
    print_worst_images(result["analysis"]["worst_images"])
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ssd.fileio import atomic_write

RESULTS_NAME = "results.json"
PR_CURVES_NAME = "pr_curves.png"
CONFUSION_PICTURE_NAME = "confusion_matrix.png"
CONFUSION_JSON_NAME = "confusion_matrix.json"
THRESHOLDS_NAME = "thresholds.png"


def results_dictionary(result: Mapping[str, Any], **context: Any) -> dict[str, Any]:
    """The numbers of an ``evaluate_detections`` result as one JSON-ready dictionary.

    Keys: "metric", "mAP", "ap" (per class), "coco" (the COCO stats, NaN where COCO had nothing
    to score; None for the VOC metrics), "excluded", "num_gt" / "num_det" (per class, VOC
    metrics), "best_f1", "thresholds", "confusion_matrix", "worst_images" (see
    ``ssd.evaluation.analysis``), then `context` (weights, settings, timing, ...) as given.
    """
    analysis = result.get("analysis", {})
    return {
        "metric": result.get("metric", "coco" if "coco" in result else None),
        "mAP": result["mAP"],
        "ap": dict(result.get("ap", {})),
        "coco": coco_stats(result.get("coco")),
        "excluded": list(result.get("excluded", [])),
        "num_gt": dict(result.get("num_gt", {})),
        "num_det": dict(result.get("num_det", {})),
        "best_f1": analysis.get("best_f1"),
        "thresholds": analysis.get("thresholds"),
        "confusion_matrix": analysis.get("confusion"),
        "worst_images": analysis.get("worst_images", []),
        **context,
    }


def write_evaluation_report(out_dir: str | Path, result: Mapping[str, Any],
                            summary: Mapping[str, Any]) -> list[Path]:
    """Write `summary` as strict JSON (results.json; NaN and infinity as null), the PR curves
    (VOC metrics) and the analysis pictures into `out_dir` (created). Each file is written
    atomically. Returns the paths written."""
    from ssd.evaluation.plots import plot_confusion_matrix, plot_pr_curves, plot_threshold_curves

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [atomic_write(out_dir / RESULTS_NAME,
                            json.dumps(finite_or_null(dict(summary)), indent=2, allow_nan=False))]
    if "precision" in result:  # the VOC metrics' curves
        written.append(plot_pr_curves(result, out_dir / PR_CURVES_NAME))
    analysis = result.get("analysis")
    if analysis is not None:
        matrix = analysis["confusion"]
        written.append(atomic_write(out_dir / CONFUSION_JSON_NAME, json.dumps(matrix, indent=1)))
        written.append(plot_confusion_matrix(matrix, out_dir / CONFUSION_PICTURE_NAME))
        written.append(plot_threshold_curves(analysis["thresholds"], out_dir / THRESHOLDS_NAME))
    return written


def print_best_f1(best: Mapping[str, Any] | None) -> None:
    """One line: the score threshold of best F1 and its precision and recall."""
    if not best or best.get("threshold") is None:
        print("best F1: n/a (no detections or no ground truth)")
        return
    print(f"best F1 {best['f1']:.4f} at score threshold {best['threshold']:.4f} "
          f"(precision {best['precision']:.4f}, recall {best['recall']:.4f})")


def print_worst_images(rows: list[Mapping[str, Any]]) -> None:
    """The images with the most errors, one line each (a place to look for label mistakes)."""
    if not rows:
        print("no image has errors at the best-F1 threshold")
        return
    print("images with the most errors at the best-F1 threshold (check their labels):")
    for row in rows:
        print(f"  {row['image_id']}: {row['errors']} errors ({row['false_positives']} false "
              f"positives, {row['missed']} missed, {row['wrong_class']} wrong class)")


def coco_stats(stats: Mapping[str, Any] | None) -> dict | None:
    """COCO's -1 ("nothing to score") as NaN, which results.json writes as null."""
    if stats is None:
        return None
    return {name: (value if name == "per_class" or value >= 0 else math.nan)
            for name, value in stats.items()}


def finite_or_null(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers (a metric without countable ground truth)
    become null, anywhere in nested dicts and lists."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
