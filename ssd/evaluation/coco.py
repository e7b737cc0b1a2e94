"""COCO box metrics through pycocotools' COCOeval.

Pixel frame: COCO boxes are continuous coordinates ``[x, y, w, h]`` with ``w = x2 - x1``
(no +1). A COCO data set normalises boxes as ``x / width``, so
``ssd.postprocess.scale_boxes(normalised, width, height)`` gives detections in that frame.
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
