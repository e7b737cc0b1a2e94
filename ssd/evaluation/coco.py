"""COCO box metrics through pycocotools' COCOeval.

Pixel frame: COCO boxes are continuous coordinates ``[x, y, w, h]`` with ``w = x2 - x1``
(no +1). A COCO data set normalises boxes as ``x / width``, so
``ssd.postprocess.scale_boxes(normalised, width, height)`` gives detections in that frame.
Ground truth of any other format becomes a COCO index in memory with
``ground_truth_to_coco`` (``ssd.evaluation.dataset_eval`` puts its boxes in this frame).
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # order of COCOeval.stats
FIRST_CATEGORY_ID = 1  # ground_truth_to_coco numbers categories as COCO does, from 1


def ground_truth_to_coco(
    gt: Mapping[int, Mapping[str, Any]],
    class_names: Sequence[str],
) -> COCO:
    """Ground truth in COCO form, as a pycocotools index held in memory (no file).

    Args:
        gt: ``{coco_image_id (int): {"width": int, "height": int, "boxes": ndarray[n, 4] xyxy
            in the continuous COCO frame (``w = x2 - x1``), "labels": int ndarray[n] 0-based,
            "difficult": bool ndarray[n]}}``, one entry per evaluated image (images without
            objects included).
        class_names: foreground class names in label order; label ``k`` becomes category id
            ``k + FIRST_CATEGORY_ID`` (``category_ids(class_names)``).

    Returns:
        A ``COCO`` whose annotations have ``bbox [x, y, w, h]``, ``area = w * h`` (which sorts
        them into COCO's small / medium / large) and ``iscrowd``: 1 for a difficult object,
        else 0. COCOeval neither counts a crowd object as a miss nor a detection matched to it
        as a false positive; it matches a crowd object by intersection over the detection's
        area (not IoU), and any number of detections may match it. (An ``ignore`` key would not
        do: COCOeval overwrites it with ``iscrowd``.)
    """
    label_to_category_id = category_ids(class_names)
    images, annotations = [], []
    for image_id, record in gt.items():
        images.append({"id": int(image_id), "width": int(record["width"]),
                       "height": int(record["height"])})
        boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        sizes = boxes[:, 2:] - boxes[:, :2]  # [n, 2] (w, h)
        labels = np.asarray(record["labels"], dtype=np.int64).reshape(-1)
        difficult = np.asarray(record.get("difficult", np.zeros(len(labels), bool)), dtype=bool)
        for (x, y), (w, h), label, crowd in zip(boxes[:, :2].tolist(), sizes.tolist(),
                                                labels.tolist(), difficult.reshape(-1).tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id),
                                "category_id": label_to_category_id[label], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": int(crowd)})
    categories = [{"id": category_id, "name": name}
                  for category_id, name in zip(label_to_category_id, class_names)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
        coco.createIndex()
    return coco


def category_ids(class_names: Sequence[str]) -> list[int]:
    """The category id ``ground_truth_to_coco`` gives each 0-based label."""
    return list(range(FIRST_CATEGORY_ID, FIRST_CATEGORY_ID + len(class_names)))


def to_coco_results(
    dets: Mapping[int, Mapping[str, Any]],
    label_to_category_id: Sequence[int] | Mapping[int, int],
) -> list[dict[str, Any]]:
    """Detections as a COCO results list (what ``COCO.loadRes`` and the eval server take).

    Args:
        dets: ``{coco_image_id: {"boxes": ndarray[k, 4] xyxy pixels, "scores": ndarray[k],
            "labels": int ndarray[k] 0-based}}``.
        label_to_category_id: the COCO category id of each 0-based label (a list, or a dict
            label -> id), e.g. ``sorted(coco.getCatIds())``.

    Returns:
        ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}]``.
    """
    results = []
    for image_id, record in dets.items():
        boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # [k, 4]
        scores = np.asarray(record["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(record["labels"], dtype=np.int64).reshape(-1)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": int(image_id),
                            "category_id": int(label_to_category_id[label]),
                            "bbox": box, "score": score})
    return results


def coco_evaluate(
    coco_gt: COCO,
    dets: Mapping[int, Mapping[str, Any]],
    label_to_category_id: Sequence[int] | Mapping[int, int],
    image_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """The 12 standard COCO box metrics of ``dets`` against ``coco_gt``.

    Args:
        coco_gt: a pycocotools ``COCO`` object holding the ground truth.
        dets: ``{coco_image_id: {"boxes": ndarray[k, 4] xyxy pixels (continuous frame),
            "scores": ndarray[k], "labels": int ndarray[k] 0-based}}``. Give every evaluated
            image a key (empty arrays when nothing was detected).
        label_to_category_id: COCO category id of each 0-based label (list or dict).
        image_ids: images to score; default the keys of ``dets`` (so a subset run scores
            that subset).
        verbose: let COCOeval print its progress and summary table.

    Returns:
        ``{"AP": ..., "AP50": ..., ..., "ARl": ...}`` (floats from ``COCOeval.stats``; -1 where
        COCO has nothing to score, e.g. no small objects), plus ``"per_class"``:
        ``{category name: AP@[.5:.95]}`` for categories with ground truth.
    """
    image_ids = sorted(int(i) for i in (dets if image_ids is None else image_ids))
    unknown = set(image_ids) - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"{len(unknown)} image id(s) are not in the COCO ground truth "
                         f"(e.g. {next(iter(unknown))})")
    results = to_coco_results(dets, label_to_category_id)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
    stats["per_class"] = _per_class_ap(evaluator, coco_gt)
    return stats


def coco_numbers(stats: Mapping[str, Any]) -> dict[str, float | None]:
    """The 12 numbers of a ``coco_evaluate`` result (no "per_class"), None where COCO had
    nothing to score (its -1), so that they are written to JSON as null."""
    return {name: (float(stats[name]) if stats[name] >= 0 else None) for name in COCO_STAT_NAMES}


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detections (``loadRes`` cannot take an empty list)."""
    results = COCO()
    results.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                       "annotations": []}
    results.createIndex()
    return results


def _per_class_ap(evaluator: COCOeval, coco_gt: COCO) -> dict[str, float]:
    """AP@[.5:.95] (all areas, 100 detections) of each category that has ground truth."""
    precision = evaluator.eval["precision"]  # [T iou, R recall, K category, A area, M maxDets]
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        if values.size:
            per_class[coco_gt.cats[category_id]["name"]] = float(values.mean())
    return per_class
