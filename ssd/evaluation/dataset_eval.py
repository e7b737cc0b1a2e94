"""The glue between a data set and the metrics: data set indices and normalised boxes in,
image ids and pixel boxes out, scored with the VOC or COCO metric.

    result = evaluate_detections(dataset, detections, metric="voc07")

Only the images that have a key in ``detections`` are scored (their ground truth, nothing
else), so an image left out of inference (unreadable, skipped) leaves the evaluation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ssd.evaluation.coco import coco_evaluate
from ssd.evaluation.voc import voc_evaluate

METRICS = ("voc07", "voc10", "coco")
VOC_IOU_THRESHOLD = 0.5  # the PASCAL VOC criterion: a detection matches when IoU > 0.5


def check_has_images(dataset) -> None:
    """Raise ValueError naming the split (or annotation) files when `dataset` is empty."""
    if len(dataset) > 0:
        return
    files = [str(path) for path in getattr(dataset, "split_files", [])]
    annotation_file = getattr(dataset, "annotation_file", None)
    if annotation_file is not None:
        files.append(str(annotation_file))
    source = ", ".join(files) or type(dataset).__name__
    report = getattr(dataset, "report", None)
    detail = f" ({report.summary()})" if report is not None else ""
    raise ValueError(f"no test images to evaluate: {source} lists none that could be loaded"
                     f"{detail}; expected at least one image id")


def ground_truth_pixels(dataset, indices: Sequence[int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Ground truth of the images `indices` (default: all), keyed by image id.

    Boxes ([n, 4] float64 xyxy) are in the frame of the normalised targets times width/height:
    annotation value - ``dataset.coordinate_origin`` (VOC XML is 1-based, COCO 0-based);
    labels [n] int64 0-based; difficult [n] bool.
    """
    origin = float(getattr(dataset, "coordinate_origin", 1.0))
    gt = {}
    for index in range(len(dataset)) if indices is None else indices:
        ann = dataset.get_annotation(index)
        gt[ann["image_id"]] = {
            "boxes": np.asarray(ann["boxes"], dtype=np.float64).reshape(-1, 4) - origin,  # [n, 4]
            "labels": np.asarray(ann["labels"], dtype=np.int64),
            "difficult": np.asarray(ann["difficult"], dtype=bool),
        }
    return gt


def detections_to_pixels(dataset, detections: dict[int, dict[str, np.ndarray]]):
    """Normalised detections keyed by data set index -> pixel boxes keyed by image id.

    Returns:
        ``{image_id: {"boxes": float64 [K, 4] xyxy in the ground_truth_pixels frame,
        "scores": float64 [K], "labels": int64 [K]}}``, in the order of `detections`.
    """
    out = {}
    for index, found in detections.items():
        ann = dataset.get_annotation(index)
        scale = np.array([ann["width"], ann["height"]] * 2, dtype=np.float64)
        out[ann["image_id"]] = {
            "boxes": found["boxes"].astype(np.float64) * scale,
            "scores": found["scores"].astype(np.float64),
            "labels": found["labels"].astype(np.int64),
        }
    return out


def evaluate_detections(dataset, detections: dict[int, dict[str, np.ndarray]],
                        metric: str = "voc07") -> dict[str, Any]:
    """Score detections of the evaluated images (keyed by data set index, boxes normalised).

    Only the images in `detections` are scored: their ground truth, nothing else (an image
    that was skipped has no key and leaves the evaluation).

    Returns:
        VOC: the ``voc_evaluate`` result ("ap" per class, NaN where a class has no countable
        ground truth; "mAP" NaN when no class has any). COCO: {"mAP": AP@[.5:.95], "coco":
        the 12 stats (-1 where COCO has nothing to score), "ap": per-class AP}.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    pixel_dets = detections_to_pixels(dataset, detections)
    if metric == "coco":
        stats = coco_evaluate(dataset.coco, pixel_dets, dataset.label_to_category_id)
        mean = stats["AP"] if stats["AP"] >= 0 else float("nan")  # -1: nothing to score
        return {"mAP": mean, "coco": stats, "ap": dict(stats["per_class"]), "excluded": []}
    gt = ground_truth_pixels(dataset, list(detections))
    return voc_evaluate(gt, pixel_dets, list(dataset.class_names),
                        iou_threshold=VOC_IOU_THRESHOLD, use_07_metric=(metric == "voc07"))
