"""What the detector gets right and wrong, beyond the mAP: precision, recall and F1 versus the
score threshold, the threshold of best F1, a confusion matrix with a background class, and the
images with the most errors.

    sweep = threshold_sweep(voc_result)                      # from voc_evaluate's curves
    analysis = analyse_detections(gt, dets, class_names, voc_result)
    analysis["best_f1"]["threshold"], analysis["confusion"]["counts"], analysis["worst_images"]

Threshold sweep: a detection counts at threshold t when its score is >= t; true and false
positives are the VOC metric's (``voc_evaluate``: IoU > 0.5, duplicates are false positives,
detections on difficult objects ignored), so the F1 agrees with the PR curves. The best-F1
threshold is searched over every distinct detection score (ties: the highest such score).

Confusion matrix, at the best-F1 threshold (``DEFAULT_SCORE_THRESHOLD`` when there are no
detections): in each image, the detections at or above the threshold are taken in descending
score order, and each claims the still unmatched ground truth it overlaps most with IoU >=
``CONFUSION_IOU`` whatever the classes, so each ground truth is matched to the best-scoring
detection on it. Row = true class, column = predicted class, the last row and column are the
background: a ground truth nothing claimed is a miss (class -> background), a detection that
claimed nothing is a false positive (background -> class), duplicates included. Difficult
ground truth is neither counted nor penalised (a detection on it is ignored).

Every array is in pixels of one frame shared by ground truth and detections (see
``ssd.evaluation.dataset_eval.ground_truth_pixels``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ssd.evaluation.voc import inclusive_iou

CONFUSION_IOU = 0.5  # a detection matches a ground truth when IoU >= this
DEFAULT_SCORE_THRESHOLD = 0.5  # the confusion matrix's threshold when no detection gives an F1
THRESHOLD_STEP = 0.02  # spacing of the thresholds at which the curves are stored and drawn
WORST_IMAGES = 10  # images listed by number of errors
BACKGROUND = "background"


# ------------------------------------------------------------------- threshold sweep
def true_positive_flags(precision: np.ndarray) -> np.ndarray:
    """bool [m]: whether each point of a VOC precision curve (one per counted detection, in
    descending score) is a true positive; the curve is cumulative TP / detections."""
    counts = np.rint(np.asarray(precision, dtype=np.float64) * np.arange(1, len(precision) + 1))
    return np.diff(np.concatenate(([0.0], counts))) > 0


def prf_at_scores(scores: np.ndarray, true_pos: np.ndarray, num_gt: int,
                  thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of the detections scoring >= each threshold.

    Args:
        scores: [m] float, true_pos: [m] bool, of the counted detections (any order).
        num_gt: countable ground truth (recall's denominator).
        thresholds: [t] float.

    Returns:
        {"precision", "recall", "f1"}: float64 [t] each; precision is 1 where nothing is kept
        (no detection is wrong), recall and F1 0 where there is no ground truth or no TP.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked = np.asarray(scores, dtype=np.float64)[order]
    cumulative_tp = np.concatenate(([0], np.cumsum(np.asarray(true_pos, bool)[order])))
    kept = np.searchsorted(-ranked, -np.asarray(thresholds, dtype=np.float64), side="right")
    tp = cumulative_tp[kept].astype(np.float64)
    precision = np.divide(tp, kept, out=np.ones_like(tp), where=kept > 0)
    recall = tp / num_gt if num_gt > 0 else np.zeros_like(tp)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1}


def best_f1(scores: np.ndarray, true_pos: np.ndarray, num_gt: int) -> dict[str, float | None]:
    """The threshold among the distinct scores whose F1 is highest (ties: the highest score).

    Returns:
        {"threshold", "f1", "precision", "recall"}; every value None when there is no
        detection or no ground truth.
    """
    candidates = np.unique(np.asarray(scores, dtype=np.float64))[::-1]  # descending
    if len(candidates) == 0 or num_gt == 0:
        return {"threshold": None, "f1": None, "precision": None, "recall": None}
    values = prf_at_scores(scores, true_pos, num_gt, candidates)
    best = int(np.argmax(values["f1"]))  # first maximum: the highest threshold
    return {"threshold": float(candidates[best]),
            **{key: float(values[key][best]) for key in ("f1", "precision", "recall")}}


def threshold_sweep(voc_result: Mapping[str, Any]) -> dict[str, Any]:
    """Precision / recall / F1 versus score threshold per class and over all classes.

    Args:
        voc_result: a ``voc_evaluate`` result ("precision", "scores", "num_gt", "excluded").

    Returns:
        {"thresholds": [t] on a ``THRESHOLD_STEP`` grid from 0 to 1,
         "per_class": {name: {"precision", "recall", "f1": [t], "best_f1": `best_f1`}},
         "overall": the same over the detections of every scored class,
         "best_f1": the overall best_f1}. Classes excluded from the mAP are left out.
    """
    grid = np.round(np.arange(0.0, 1.0 + THRESHOLD_STEP / 2, THRESHOLD_STEP), 6)
    names = [name for name in voc_result["scores"] if name not in voc_result.get("excluded", [])]
    per_class, all_scores, all_tp, all_gt = {}, [], [], 0
    for name in names:
        scores = np.asarray(voc_result["scores"][name], dtype=np.float64)
        true_pos = true_positive_flags(voc_result["precision"][name])
        num_gt = int(voc_result["num_gt"][name])
        per_class[name] = _curves(scores, true_pos, num_gt, grid)
        all_scores.append(scores)
        all_tp.append(true_pos)
        all_gt += num_gt
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    true_pos = np.concatenate(all_tp) if all_tp else np.zeros(0, bool)
    overall = _curves(scores, true_pos, all_gt, grid)
    return {"thresholds": grid.tolist(), "per_class": per_class, "overall": overall,
            "best_f1": overall["best_f1"]}


def _curves(scores: np.ndarray, true_pos: np.ndarray, num_gt: int, grid: np.ndarray) -> dict:
    values = prf_at_scores(scores, true_pos, num_gt, grid)
    return {**{key: np.round(value, 4).tolist() for key, value in values.items()},
            "best_f1": best_f1(scores, true_pos, num_gt)}


# ------------------------------------------------------------------- confusion matrix
def pairwise_inclusive_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair: [N, 4] x [M, 4] xyxy pixels -> [N, M] (the devkit's inclusive pixels)."""
    rows, cols = len(boxes_a), len(boxes_b)
    pairs_a = np.repeat(boxes_a.reshape(-1, 4), cols, axis=0)
    pairs_b = np.tile(boxes_b.reshape(-1, 4), (rows, 1))
    return inclusive_iou(pairs_a, pairs_b).reshape(rows, cols)


def match_image(truth: Mapping[str, np.ndarray], found: Mapping[str, np.ndarray] | None,
                score_threshold: float, num_classes: int) -> np.ndarray:
    """The confusion counts of one image (see the module docstring).

    Args:
        truth: {"boxes": [n, 4], "labels": int [n], "difficult": bool [n] (optional)}.
        found: {"boxes": [k, 4], "scores": [k], "labels": int [k]} or None.

    Returns:
        int64 [C + 1, C + 1]: rows true class, columns predicted class, index C background.
    """
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    gt_boxes = np.asarray(truth["boxes"], dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(truth["labels"], dtype=np.int64).reshape(-1)
    difficult = np.asarray(truth.get("difficult", np.zeros(len(gt_labels), bool)), bool).reshape(-1)
    if found is None:
        found = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    scores = np.asarray(found["scores"], dtype=np.float64).reshape(-1)
    kept = np.flatnonzero(scores >= score_threshold)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    det_boxes = np.asarray(found["boxes"], dtype=np.float64).reshape(-1, 4)[kept]
    det_labels = np.asarray(found["labels"], dtype=np.int64).reshape(-1)[kept]
    iou = pairwise_inclusive_iou(det_boxes, gt_boxes)  # [K, n]
    taken = np.zeros(len(gt_labels), dtype=bool)
    background = num_classes
    for det, label in enumerate(det_labels):
        overlaps = np.where(taken | difficult, -1.0, iou[det])
        target = int(np.argmax(overlaps)) if len(overlaps) else -1
        if target >= 0 and overlaps[target] >= CONFUSION_IOU:
            taken[target] = True
            counts[gt_labels[target], label] += 1
        elif not (difficult & (iou[det] >= CONFUSION_IOU)).any():
            counts[background, label] += 1  # false positive (a duplicate, or nothing there)
    missed = gt_labels[~taken & ~difficult]
    np.add.at(counts[:, background], missed, 1)
    return counts


def confusion_matrix(gt: Mapping[Any, Mapping[str, np.ndarray]],
                     dets: Mapping[Any, Mapping[str, np.ndarray]], class_names: Sequence[str],
                     score_threshold: float) -> tuple[dict[str, Any], dict[Any, np.ndarray]]:
    """The confusion matrix of every image in `gt` (``voc_evaluate``'s inputs).

    Returns:
        ({"classes": class names + "background", "score_threshold", "iou_threshold",
          "counts": int [C + 1][C + 1] (rows true, columns predicted),
          "normalised": each row divided by its sum (rows without any: zeros)},
         {image_id: that image's int64 [C + 1, C + 1] counts}).
    """
    num_classes = len(class_names)
    per_image = {image_id: match_image(truth, dets.get(image_id), score_threshold, num_classes)
                 for image_id, truth in gt.items()}
    counts = sum(per_image.values(), np.zeros((num_classes + 1, num_classes + 1), np.int64))
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    matrix = {"classes": [*class_names, BACKGROUND], "score_threshold": float(score_threshold),
              "iou_threshold": CONFUSION_IOU, "counts": counts.tolist(),
              "normalised": np.round(normalised, 4).tolist()}
    return matrix, per_image


def image_errors(counts: np.ndarray) -> dict[str, int]:
    """One image's errors from its [C + 1, C + 1] counts: false positives (background row),
    misses (background column), wrong classes (off-diagonal class cells), and their sum."""
    classes = counts[:-1, :-1]
    errors = {"false_positives": int(counts[-1, :-1].sum()),
              "missed": int(counts[:-1, -1].sum()),
              "wrong_class": int(classes.sum() - np.trace(classes))}
    return {**errors, "errors": sum(errors.values())}


def worst_images(per_image: Mapping[Any, np.ndarray], limit: int = WORST_IMAGES) -> list[dict]:
    """The `limit` images with the most errors (`image_errors`), most first (ties: input
    order); images without errors are left out. Each: {"image_id", "errors", ...}."""
    rows = [{"image_id": str(image_id), **image_errors(counts)}
            for image_id, counts in per_image.items()]
    rows = [row for row in rows if row["errors"] > 0]
    rows.sort(key=lambda row: -row["errors"])  # stable: ties keep the input order
    return rows[:limit]


def analyse_detections(gt: Mapping[Any, Mapping[str, np.ndarray]],
                       dets: Mapping[Any, Mapping[str, np.ndarray]], class_names: Sequence[str],
                       voc_result: Mapping[str, Any]) -> dict[str, Any]:
    """Threshold sweep, confusion matrix at the best-F1 threshold, and the worst images.

    Args:
        gt, dets, class_names: ``voc_evaluate``'s inputs; voc_result: its result.

    Returns:
        {"thresholds": `threshold_sweep`, "best_f1": its overall best,
         "confusion": `confusion_matrix`, "worst_images": `worst_images`}.
    """
    sweep = threshold_sweep(voc_result)
    threshold = sweep["best_f1"]["threshold"]
    if threshold is None:
        threshold = DEFAULT_SCORE_THRESHOLD
    matrix, per_image = confusion_matrix(gt, dets, class_names, threshold)
    return {"thresholds": sweep, "best_f1": sweep["best_f1"], "confusion": matrix,
            "worst_images": worst_images(per_image)}
