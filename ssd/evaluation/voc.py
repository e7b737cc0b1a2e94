"""PASCAL VOC detection metric, computed as the VOC devkit does, vectorised over the data set.

Semantics (VOCevaldet.m / the py-faster-rcnn ``voc_eval`` port), per class:

- detections are taken in order of descending score;
- each is compared with the ground truth of the same image and class and takes the one with
  the highest IoU (first one on ties), whether or not that ground truth is already matched;
- IoU uses inclusive pixels: width = x2 - x1 + 1, height = y2 - y1 + 1;
- IoU > ``iou_threshold`` (strictly) to a ``difficult`` ground truth: neither TP nor FP;
  to a ground truth not matched before: TP; to one already matched: FP (duplicate);
  otherwise (no ground truth or IoU too low): FP;
- recall is over the non-difficult ground truth; a class without any is excluded from the
  mean (its AP is NaN and its name is listed under ``"excluded"``).

Because the ground truth a detection picks does not depend on earlier matches, the greedy
loop of the devkit reduces to "the first detection (in score order) that picks a given
ground truth is the TP", which is computed for all detections at once.

Ties in score are broken by input order: images in the order of ``gt``, then detections in
the order given for each image (the devkit leaves this to an unstable sort).

Pixel frame: ``gt`` and ``dets`` must share one frame; the IoU does not depend on which. This
project uses the 0-based frame, i.e. VOC XML values minus 1: VOCDataset normalises boxes as
``(xml - 1) / size``, so ``ssd.postprocess.scale_boxes(normalised, width, height)`` of a
detection lands in the same frame. Results files for the official devkit are written 1-based
(see ``write_voc_results``).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

# The 11 recall points of the VOC2007 AP exactly as the published voc_eval (py-faster-rcnn,
# ssd.pytorch, mmdetection) makes them: 0.3, 0.6 and 0.7 come out a little above the tenths
# (0.30000000000000004, ...), so a recall of exactly 3/10 does not reach the point "0.3".
RECALL_POINTS_07 = np.arange(0.0, 1.1, 0.1)


class _Flat(NamedTuple):
    """Per-box arrays of a whole data set, concatenated image after image."""

    boxes: np.ndarray  # [N, 4] float64 xyxy pixels
    labels: np.ndarray  # [N] int64, 0-based class index
    image: np.ndarray  # [N] int64, index into the image order
    extra: np.ndarray  # [N]: scores (float64) for detections, difficult (bool) for ground truth


def voc_evaluate(
    gt: Mapping[Any, Mapping[str, Any]],
    dets: Mapping[Any, Mapping[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, Any]:
    """Per-class average precision and mAP of detections against ground truth (VOC devkit).

    Args:
        gt: ``{image_id: {"boxes": ndarray[n, 4] xyxy pixels, "labels": int ndarray[n],
            "difficult": bool ndarray[n]}}`` for every evaluated image, including images
            without objects (empty arrays). ``"difficult"`` may be omitted (all False).
        dets: ``{image_id: {"boxes": ndarray[k, 4] xyxy pixels, "scores": ndarray[k],
            "labels": int ndarray[k]}}``; images may be missing (no detections), but every
            image id must be in ``gt``. Labels are 0-based indices into ``class_names``.
            CPU tensors are accepted wherever ndarrays are.
        class_names: names of the foreground classes, in label order.
        iou_threshold: a detection matches when its IoU is strictly greater.
        use_07_metric: VOC2007 11-point AP if True, else VOC2010+ area under the precision
            envelope.

    Returns:
        ``{"ap": {name: float}, "mAP": float,
           "precision": {name: ndarray[m]}, "recall": {name: ndarray[m]},
           "scores": {name: ndarray[m]}, "num_gt": {name: int}, "num_det": {name: int},
           "excluded": [names], "metric": "voc07" | "voc10", "iou_threshold": float}``.
        The curves have one point per detection that is not ignored (TP or FP), in score
        order; ``scores`` gives the score at each point. ``num_gt`` counts non-difficult
        ground truth. Excluded classes have AP NaN; the mAP averages the others (NaN if none).
    """
    num_classes = len(class_names)
    image_ids = list(gt)
    _check_image_ids(image_ids, dets)
    truth = _flatten([gt[i] for i in image_ids], "difficult", bool, num_classes, "gt")
    found = _flatten([dets.get(i) for i in image_ids], "scores", np.float64, num_classes, "dets")

    best_iou, best_gt = _best_overlaps(found, truth, num_classes)
    order, starts = _class_order(found.labels, found.extra, num_classes)
    true_pos, ignored = _assign(order, best_iou, best_gt, truth.extra, iou_threshold)

    num_gt = np.bincount(truth.labels[~truth.extra], minlength=num_classes)
    result: dict[str, Any] = {key: {} for key in ("ap", "precision", "recall", "scores",
                                                  "num_gt", "num_det")}
    excluded = []
    for label, name in enumerate(class_names):
        rows = order[starts[label]:starts[label + 1]]
        rows = rows[~ignored[rows]]  # TP or FP, in score order
        recall, precision = _pr_curve(true_pos[rows], int(num_gt[label]))
        result["precision"][name], result["recall"][name] = precision, recall
        result["scores"][name] = found.extra[rows]
        result["num_gt"][name] = int(num_gt[label])
        result["num_det"][name] = int(starts[label + 1] - starts[label])
        if num_gt[label] == 0:
            excluded.append(name)
            result["ap"][name] = float("nan")
        else:
            result["ap"][name] = voc_ap(recall, precision, use_07_metric)
    kept = [result["ap"][name] for name in class_names if name not in excluded]
    result["mAP"] = float(np.mean(kept)) if kept else float("nan")
    result["excluded"] = excluded
    result["metric"] = "voc07" if use_07_metric else "voc10"
    result["iou_threshold"] = float(iou_threshold)
    return result


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Average precision of one class from its PR points (recall non-decreasing).

    Args:
        recall: [m] cumulative recall after each detection in score order.
        precision: [m] cumulative precision after each detection.
        use_07_metric: True: mean over r in ``RECALL_POINTS_07`` of the highest precision
            at recall >= r (0 where none); the points are the published voc_eval's
            ``np.arange(0.0, 1.1, 0.1)``, whose 0.3, 0.6 and 0.7 lie just above the exact
            tenths, so published numbers are reproduced to the last bit. False: area under
            the monotone (non-increasing) envelope of precision, summed where recall changes
            (VOC2010+).
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        envelope = np.append(np.maximum.accumulate(precision[::-1])[::-1], 0.0)
        first = np.searchsorted(recall, RECALL_POINTS_07, side="left")  # first recall >= r
        return float(np.mean(envelope[first]))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def inclusive_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes in inclusive pixel coordinates (the devkit's +1).

    Args:
        boxes_a: [M, 4] xyxy pixels.
        boxes_b: [M, 4] xyxy pixels (row i is paired with row i of boxes_a).

    Returns:
        [M] float64 IoU (0 for degenerate pairs whose union is not positive).
    """
    inter_w = np.minimum(boxes_a[:, 2], boxes_b[:, 2]) - np.maximum(boxes_a[:, 0], boxes_b[:, 0])
    inter_h = np.minimum(boxes_a[:, 3], boxes_b[:, 3]) - np.maximum(boxes_a[:, 1], boxes_b[:, 1])
    inter = np.maximum(inter_w + 1.0, 0.0) * np.maximum(inter_h + 1.0, 0.0)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0] + 1.0) * (boxes_a[:, 3] - boxes_a[:, 1] + 1.0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0] + 1.0) * (boxes_b[:, 3] - boxes_b[:, 1] + 1.0)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)  # 0: degenerate


def _check_image_ids(image_ids: list, dets: Mapping) -> None:
    unknown = set(dets) - set(image_ids)
    if unknown:
        example = next(iter(unknown))
        raise ValueError(
            f"dets has {len(unknown)} image id(s) that gt does not (e.g. {example!r}); gt must "
            "list every evaluated image, with empty arrays for images without objects"
        )


def _flatten(
    records: list[Mapping[str, Any] | None], extra_key: str, extra_dtype: type,
    num_classes: int, what: str,
) -> _Flat:
    """Concatenate per-image dicts (None = no boxes) into one _Flat; check shapes and labels.

    The extra field (``extra_key``) defaults to zeros/False when a record lacks it.
    """
    boxes, labels, extra, counts = [], [], [], []
    for index, record in enumerate(records):
        if record is None:
            counts.append(0)
            continue
        image_boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        image_labels = np.asarray(record["labels"], dtype=np.int64).reshape(-1)
        value = record.get(extra_key)
        image_extra = (np.zeros(len(image_labels), extra_dtype) if value is None
                       else np.asarray(value, dtype=extra_dtype).reshape(-1))
        if not len(image_boxes) == len(image_labels) == len(image_extra):
            raise ValueError(
                f"{what}: image #{index} has {len(image_boxes)} boxes, {len(image_labels)} "
                f"labels and {len(image_extra)} {extra_key}; they must have the same length"
            )
        boxes.append(image_boxes)
        labels.append(image_labels)
        extra.append(image_extra)
        counts.append(len(image_labels))
    flat = _Flat(
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        image=np.repeat(np.arange(len(records)), counts),
        extra=np.concatenate(extra) if extra else np.zeros(0, extra_dtype),
    )
    bad = (flat.labels < 0) | (flat.labels >= num_classes)
    if bad.any():
        raise ValueError(f"{what}: label {flat.labels[bad][0]} outside 0..{num_classes - 1} "
                         f"({num_classes} class names)")
    if not np.isfinite(flat.boxes).all() or not np.isfinite(flat.extra.astype(float)).all():
        raise ValueError(f"{what}: boxes or {extra_key} contain NaN or infinity")
    return flat


def _best_overlaps(found: _Flat, truth: _Flat, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, its highest-IoU ground truth of the same image and class.

    Every (detection, ground truth) pair sharing an image and class is formed at once; no
    padding, so the work is the number of such pairs.

    Returns:
        best_iou [D] float64 (-inf where the image has no ground truth of that class),
        best_gt [D] int64 index into truth (-1 where none); ties go to the first ground truth
        in input order, as np.argmax in the devkit.
    """
    num_dets = len(found.labels)
    best_iou = np.full(num_dets, -np.inf)
    best_gt = np.full(num_dets, -1, dtype=np.int64)
    gt_keys = truth.image * num_classes + truth.labels
    gt_order = np.argsort(gt_keys, kind="stable")  # grouped by (image, class), input order
    det_keys = found.image * num_classes + found.labels
    sorted_keys = gt_keys[gt_order]
    first = np.searchsorted(sorted_keys, det_keys, side="left")
    count = np.searchsorted(sorted_keys, det_keys, side="right") - first  # [D]
    num_pairs = int(count.sum())
    if num_pairs == 0:
        return best_iou, best_gt

    # Pair p belongs to detection pair_det[p] and is its offset-th candidate ground truth.
    pair_det = np.repeat(np.arange(num_dets), count)  # [M], grouped by detection
    run_start = np.cumsum(count) - count  # [D] first pair of each detection
    pair_gt = gt_order[first[pair_det] + np.arange(num_pairs) - run_start[pair_det]]
    iou = inclusive_iou(found.boxes[pair_det], truth.boxes[pair_gt])  # [M]

    # Per detection: the highest IoU, and the first pair of its run that reaches it.
    has_gt = count > 0
    run_max = np.maximum.reduceat(iou, run_start[has_gt])  # runs are non-empty and contiguous
    reaches = np.flatnonzero(iou == np.repeat(run_max, count[has_gt]))  # sorted pair indices
    first_of_run = np.ones(len(reaches), dtype=bool)
    first_of_run[1:] = pair_det[reaches[1:]] != pair_det[reaches[:-1]]
    winner = reaches[first_of_run]  # [D with ground truth]
    best_iou[has_gt] = iou[winner]
    best_gt[has_gt] = pair_gt[winner]
    return best_iou, best_gt


def _class_order(
    labels: np.ndarray, scores: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Detections grouped by class, each class in descending score (ties: input order).

    Args:
        labels: [D] int64; scores: [D] float64.

    Returns:
        order [D] detection indices; starts [num_classes + 1]: class c is
        ``order[starts[c]:starts[c + 1]]``.
    """
    small = labels.astype(np.int16) if num_classes <= np.iinfo(np.int16).max else labels
    by_class = np.argsort(small, kind="stable")  # radix sort for small integers
    starts = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=num_classes))))
    order = np.empty_like(by_class)
    for label in range(num_classes):  # one sort per class: cheaper than a two-key lexsort
        rows = by_class[starts[label]:starts[label + 1]]
        order[starts[label]:starts[label + 1]] = rows[np.argsort(-scores[rows], kind="stable")]
    return order, starts


def _assign(
    order: np.ndarray, best_iou: np.ndarray, best_gt: np.ndarray, difficult: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """TP / ignored flags of every detection (the rest are FP).

    Args:
        order: [D] detection indices in processing order (descending score within a class).
        best_iou, best_gt: [D] from _best_overlaps.
        difficult: [G] bool per ground truth.

    Returns:
        true_pos [D] bool: first detection, in ``order``, to pick a non-difficult ground truth
            with IoU above the threshold; ignored [D] bool: picked a difficult ground truth.
    """
    matched = best_iou > iou_threshold
    picks_difficult = np.zeros_like(matched)
    picks_difficult[matched] = difficult[best_gt[matched]]
    claims = order[(matched & ~picks_difficult)[order]]  # candidates in processing order
    _, first_claim = np.unique(best_gt[claims], return_index=True)
    true_pos = np.zeros_like(matched)
    true_pos[claims[first_claim]] = True
    return true_pos, picks_difficult


def _pr_curve(true_pos: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision [m] of one class's TP/FP flags [m] in score order."""
    tp = np.cumsum(true_pos, dtype=np.float64)
    fp = np.cumsum(~true_pos, dtype=np.float64)
    recall = tp / num_gt if num_gt > 0 else np.zeros_like(tp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision
