"""The glue between a data set and the metrics: data set indices and normalised boxes in,
image ids and pixel boxes out, scored with the VOC or COCO metric.

    result = evaluate_detections(dataset, detections, metric="voc07")

Only the images that have a key in ``detections`` are scored (their ground truth, nothing
else), so an image left out of inference (unreadable, skipped) leaves the evaluation.

The COCO metric works on every format: a COCO data set is scored against its own annotation
file; any other (VOC, YOLO, shapes) has its ground truth turned into COCO form in memory
(``coco_inputs``), difficult objects as crowd regions (neither counted nor penalised).

A model's class k is scored as the data set's class of the same name (`match_classes`): the same
names in another order are translated, classes only the model knows are left out, and with
the VOC metrics classes only the data set knows are not scored; no common name is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ssd.evaluation.analysis import analyse_detections
from ssd.evaluation.coco import category_ids, coco_evaluate, ground_truth_to_coco
from ssd.evaluation.voc import voc_evaluate

logger = logging.getLogger(__name__)

METRICS = ("voc07", "voc10", "coco")
VOC_IOU_THRESHOLD = 0.5  # the PASCAL VOC criterion: a detection matches when IoU > 0.5
NOT_IN_DATASET = -1  # ClassMatch.model_to_dataset of a model class the data set does not have


@dataclass(frozen=True)
class ClassMatch:
    """A model's classes matched by name to a data set's.

    Attributes:
        model_to_dataset: int64 [M]: the data set label of each model label, NOT_IN_DATASET
            where the data set has no class of that name.
        scored: the data set's classes that are scored (those the model knows), in data set
            order.
        note: one line saying what was translated or left out; None when the lists are equal.
    """

    model_to_dataset: np.ndarray
    scored: list[str]
    note: str | None


def match_classes(model_classes: Sequence[str], dataset_classes: Sequence[str],
                  metric: str = "voc07") -> ClassMatch:
    """Match the model's classes to the data set's by name.

    Same names in another order: each model label is translated to the data set's. Classes
    only the model knows: their detections are left out. Classes only the data set knows:
    not scored with the VOC metrics (each class has its own AP; the mAP averages the common
    classes); refused with the COCO metric, whose AP averages every category of the file.

    Raises:
        ValueError: no common class name, or the COCO metric with classes the model lacks
            (the message lists both lists).
    """
    model_classes, dataset_classes = list(model_classes), list(dataset_classes)
    lists = f"model classes {model_classes}, data set classes {dataset_classes}"
    scored = [name for name in dataset_classes if name in model_classes]
    if not scored:
        raise ValueError(f"the model and the data set have no class name in common ({lists}); "
                         "evaluate on a data set of the model's classes, or set data.class_names "
                         "to the data set's names")
    label = {name: index for index, name in enumerate(dataset_classes)}
    model_to_dataset = np.array([label.get(name, NOT_IN_DATASET) for name in model_classes],
                                dtype=np.int64)
    if model_classes == dataset_classes:
        return ClassMatch(model_to_dataset, scored, None)
    unknown = [name for name in dataset_classes if name not in model_classes]
    if unknown and metric == "coco":
        raise ValueError(f"the data set has classes the model was not trained on ({unknown}) and "
                         f"the COCO metric averages over all of them ({lists}); evaluate with "
                         "--metric voc07 or voc10, which score the common classes only")
    parts = [f"{len(scored)} classes matched by name to the data set's labels"]
    if not unknown and len(scored) == len(model_classes):
        parts[0] += " (the data set lists them in another order)"
    extra = [name for name in model_classes if name not in label]
    if extra:
        parts.append(f"detections of {extra} (not in the data set) left out")
    if unknown:
        parts.append(f"the data set's {unknown} (unknown to the model) not scored")
    return ClassMatch(model_to_dataset, scored, "; ".join(parts))


def translate_labels(detections: dict[int, dict[str, np.ndarray]],
                     model_to_dataset: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    """Detections with model labels -> the same detections with data set labels; those of
    classes the data set does not have (NOT_IN_DATASET) are dropped.

    Args:
        detections: ``{index: {"boxes": [K, 4], "scores": [K], "labels": int [K]}}``.
        model_to_dataset: int64 [M], from `match_classes`.
    """
    out = {}
    for index, found in detections.items():
        labels = model_to_dataset[np.asarray(found["labels"], dtype=np.int64)]  # [K]
        kept = labels != NOT_IN_DATASET
        out[index] = {**{key: value[kept] for key, value in found.items()}, "labels": labels[kept]}
    return out


def _only_classes(records: dict[str, dict[str, np.ndarray]], old_to_new: np.ndarray):
    """Per-image records ("labels" and same-length arrays) relabelled by `old_to_new` (int64,
    -1: dropped)."""
    out = {}
    for image_id, record in records.items():
        labels = old_to_new[record["labels"]]
        kept = labels >= 0
        out[image_id] = {**{key: value[kept] for key, value in record.items()}, "labels": labels[kept]}
    return out


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
    gt = {}
    for index in range(len(dataset)) if indices is None else indices:
        ann = dataset.get_annotation(index)
        gt[ann["image_id"]] = _ground_truth_record(dataset, ann)
    return gt


def _ground_truth_record(dataset, ann: dict[str, Any]) -> dict[str, np.ndarray]:
    """One `get_annotation` result in the evaluation frame (see ground_truth_pixels)."""
    origin = float(getattr(dataset, "coordinate_origin", 1.0))
    return {
        "boxes": np.asarray(ann["boxes"], dtype=np.float64).reshape(-1, 4) - origin,  # [n, 4]
        "labels": np.asarray(ann["labels"], dtype=np.int64),
        "difficult": np.asarray(ann["difficult"], dtype=bool),
    }


def detections_to_pixels(dataset, detections: dict[int, dict[str, np.ndarray]]):
    """Normalised detections keyed by data set index -> pixel boxes keyed by image id.

    Returns:
        ``{image_id: {"boxes": float64 [K, 4] xyxy in the ground_truth_pixels frame,
        "scores": float64 [K], "labels": int64 [K]}}``, in the order of `detections`.
    """
    out = {}
    for index, found in detections.items():
        ann = dataset.get_annotation(index)
        out[ann["image_id"]] = _detection_record(ann, found)
    return out


def _detection_record(ann: dict[str, Any], found: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One image's normalised detections in pixels of the image `ann` describes."""
    scale = np.array([ann["width"], ann["height"]] * 2, dtype=np.float64)
    return {
        "boxes": found["boxes"].astype(np.float64) * scale,  # [K, 4]
        "scores": found["scores"].astype(np.float64),
        "labels": found["labels"].astype(np.int64),
    }


def uses_inclusive_pixels(dataset) -> bool:
    """Whether `dataset` annotates inclusive pixel indices, as the VOC devkit does (1-based:
    a box from x = 1 to x = 10 covers 10 pixels), rather than continuous coordinates (COCO and
    YOLO: a box from x = 0 to x = 10 is 10 wide). The 1-based formats are the inclusive ones."""
    return float(getattr(dataset, "coordinate_origin", 1.0)) == 1.0


def to_continuous_frame(boxes: np.ndarray, inclusive: bool) -> np.ndarray:
    """Boxes [n, 4] xyxy of the evaluation frame -> COCO's continuous frame (``w = x2 - x1``):
    inclusive pixels end one pixel after their last index, so x2 and y2 gain 1 for them. Applied
    to ground truth and detections alike, so the COCO IoU equals the devkit's inclusive IoU."""
    if not inclusive:
        return boxes
    return boxes + np.array([0.0, 0.0, 1.0, 1.0])


def coco_inputs(dataset, detections: dict[int, dict[str, np.ndarray]]):
    """Ground truth and detections of the images in `detections`, ready for ``coco_evaluate``.

    Both are keyed by data set index (which is the COCO image id) and in COCO's continuous pixel
    frame (``to_continuous_frame``): VOC's inclusive boxes span ``xmax - xmin + 1`` pixels, and
    a detection (trained on ``(xml - 1) / size``) gains the same pixel on its far edges; COCO
    and YOLO boxes are continuous already.

    Returns:
        (``ground_truth_to_coco`` of the ground truth (difficult objects as iscrowd=1),
        ``{index: {"boxes": float64 [K, 4] xyxy, "scores": [K], "labels": int64 [K]}}``).
    """
    inclusive = uses_inclusive_pixels(dataset)
    gt, dets = {}, {}
    for index, found in detections.items():
        ann = dataset.get_annotation(index)
        truth = _ground_truth_record(dataset, ann)
        gt[index] = {**truth, "boxes": to_continuous_frame(truth["boxes"], inclusive),
                     "width": ann["width"], "height": ann["height"]}
        pixels = _detection_record(ann, found)
        dets[index] = {**pixels, "boxes": to_continuous_frame(pixels["boxes"], inclusive)}
    return ground_truth_to_coco(gt, list(dataset.class_names)), dets


def _coco_metric(dataset, detections: dict[int, dict[str, np.ndarray]]) -> dict[str, Any]:
    """``coco_evaluate`` of `detections`: against the data set's own COCO index when it has
    one (a COCO annotation file), else against its ground truth in COCO form."""
    if getattr(dataset, "coco", None) is not None:
        return coco_evaluate(dataset.coco, detections_to_pixels(dataset, detections),
                             dataset.label_to_category_id)
    coco_gt, pixel_dets = coco_inputs(dataset, detections)
    return coco_evaluate(coco_gt, pixel_dets, category_ids(dataset.class_names))


def evaluate_detections(dataset, detections: dict[int, dict[str, np.ndarray]],
                        metric: str = "voc07",
                        model_classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Score detections of the evaluated images (keyed by data set index, boxes normalised).

    Only the images in `detections` are scored: their ground truth, nothing else (an image
    that was skipped has no key and leaves the evaluation).

    Args:
        model_classes: the model's foreground class names in label order; matched to
            ``dataset.class_names`` by name (`match_classes`, logged when they differ). None:
            the detections' labels are the data set's.

    Returns:
        VOC: the ``voc_evaluate`` result ("ap" per scored class, NaN where a class has no
        countable ground truth; "mAP" NaN when no class has any). COCO (any data set format):
        {"mAP": AP@[.5:.95], "coco": the 12 stats of ``COCO_STAT_NAMES`` (AP, AP50, AP75, APs,
        APm, APl, then AR; -1 where COCO has nothing to score) and "per_class", "ap": per-class
        AP}. Both with "detections": `detections` in data set labels, and "analysis": the
        ``ssd.evaluation.analysis.analyse_detections`` result (threshold sweep, best-F1
        threshold, confusion matrix, worst images; with the COCO metric its true positives
        are those of the VOC metric at IoU 0.5).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    dataset_classes = list(dataset.class_names)
    match = match_classes(model_classes, dataset_classes, metric) if model_classes is not None else None
    if match is not None and match.note is not None:
        logger.info("Evaluation: %s", match.note)
        detections = translate_labels(detections, match.model_to_dataset)
    pixel_dets = detections_to_pixels(dataset, detections)
    gt = ground_truth_pixels(dataset, list(detections))
    if metric == "coco":
        stats = _coco_metric(dataset, detections)
        mean = stats["AP"] if stats["AP"] >= 0 else float("nan")  # -1: nothing to score
        at_half = voc_evaluate(gt, pixel_dets, dataset_classes, iou_threshold=VOC_IOU_THRESHOLD,
                               use_07_metric=False)  # the analysis's true and false positives
        return {"mAP": mean, "coco": stats, "ap": dict(stats["per_class"]), "excluded": [],
                "detections": detections,
                "analysis": analyse_detections(gt, pixel_dets, dataset_classes, at_half)}
    scored = match.scored if match is not None else dataset_classes
    if scored != dataset_classes:  # relabel truth and detections to the scored classes
        to_scored = np.array([scored.index(name) if name in scored else -1
                              for name in dataset_classes], dtype=np.int64)
        gt, pixel_dets = _only_classes(gt, to_scored), _only_classes(pixel_dets, to_scored)
    result = voc_evaluate(gt, pixel_dets, scored, iou_threshold=VOC_IOU_THRESHOLD,
                          use_07_metric=(metric == "voc07"))
    return {**result, "detections": detections,
            "analysis": analyse_detections(gt, pixel_dets, scored, result)}
