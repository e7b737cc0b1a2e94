"""`eval` section: VOC metric time on a synthetic VOC07-test-sized case vs a devkit-style loop.

The case: 4952 images, 20 classes, 1-5 ground-truth boxes per image (about 10% difficult) and
200 detections per image (jittered copies of the ground truth, some with the wrong class, plus
random boxes), i.e. about a million detections. ``voc_evaluate`` must score it in under 2 s.

The baseline is the classic devkit-style ``voc_eval`` (the py-faster-rcnn port of
VOCevaldet.m): per class, a dict of ground truth per image, then a Python loop over every
detection of the data set in score order. Both are checked to give the same AP.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import best_time
from ssd.data.voc import VOC_CLASSES
from ssd.evaluation import voc_evaluate

NUM_IMAGES = 4952
DETECTIONS_PER_IMAGE = 200
TARGET_SECONDS = 2.0


def synthetic_case(
    num_images: int = NUM_IMAGES, num_classes: int = 20,
    detections_per_image: int = DETECTIONS_PER_IMAGE, seed: int = 0,
) -> tuple[dict, dict]:
    """Random (gt, dets) in the ``voc_evaluate`` format, in a 500 x 375 pixel frame."""
    rng = np.random.default_rng(seed)
    gt, dets = {}, {}
    for image_id in range(num_images):
        count = int(rng.integers(1, 6))
        corner = rng.uniform(0, 400, (count, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(20, 200, (count, 2))], axis=1)
        labels = rng.integers(0, num_classes, count)
        gt[image_id] = {"boxes": boxes, "labels": labels, "difficult": rng.random(count) < 0.1}

        copies = rng.integers(0, count, detections_per_image // 4)  # near a ground truth
        near = boxes[copies] + rng.normal(0, 12, (len(copies), 4))
        near_labels = np.where(rng.random(len(copies)) < 0.8, labels[copies],
                               rng.integers(0, num_classes, len(copies)))
        other = detections_per_image - len(copies)
        corner = rng.uniform(0, 400, (other, 2))
        far = np.concatenate([corner, corner + rng.uniform(10, 200, (other, 2))], axis=1)
        dets[image_id] = {
            "boxes": np.concatenate([near, far]),
            "scores": np.concatenate([rng.beta(4, 2, len(copies)), rng.beta(1, 6, other)]),
            "labels": np.concatenate([near_labels, rng.integers(0, num_classes, other)]),
        }
    return gt, dets


def devkit_voc_eval(gt: dict, dets: dict, label: int, iou_threshold: float = 0.5,
                    use_07_metric: bool = True) -> float:
    """AP of one class, devkit style: one Python iteration per detection (the baseline)."""
    records, num_positive = {}, 0
    for image_id, truth in gt.items():
        mask = truth["labels"] == label
        records[image_id] = {"boxes": truth["boxes"][mask], "difficult": truth["difficult"][mask],
                             "taken": [False] * int(mask.sum())}
        num_positive += int((~truth["difficult"][mask]).sum())
    image_ids, scores, boxes = [], [], []
    for image_id, found in dets.items():
        mask = found["labels"] == label
        image_ids += [image_id] * int(mask.sum())
        scores.append(found["scores"][mask])
        boxes.append(found["boxes"][mask])
    order = np.argsort(-np.concatenate(scores), kind="stable")
    boxes = np.concatenate(boxes)[order]
    image_ids = [image_ids[i] for i in order]
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d in range(len(order)):
        record, box = records[image_ids[d]], boxes[d]
        best, best_index = -np.inf, -1
        if record["boxes"].size > 0:
            gt_boxes = record["boxes"]
            iw = np.maximum(np.minimum(gt_boxes[:, 2], box[2])
                            - np.maximum(gt_boxes[:, 0], box[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gt_boxes[:, 3], box[3])
                            - np.maximum(gt_boxes[:, 1], box[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
                     + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0)
                     * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0) - inter)
            overlaps = inter / union
            best, best_index = overlaps.max(), overlaps.argmax()
        if best > iou_threshold:
            if not record["difficult"][best_index]:
                if not record["taken"][best_index]:
                    tp[d] = 1.0
                    record["taken"][best_index] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_positive
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _devkit_ap(recall, precision, use_07_metric)


def _devkit_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    if use_07_metric:
        ap = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):  # the published voc_eval's points
            above = precision[recall >= threshold]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def run(quick: bool) -> dict:
    names = list(VOC_CLASSES)
    gt, dets = synthetic_case()
    num_dets = sum(len(d["scores"]) for d in dets.values())
    print(f"case: {len(gt)} images, {len(names)} classes, "
          f"{sum(len(g['labels']) for g in gt.values())} ground truth, {num_dets} detections")

    repeats = 1 if quick else 3
    fast_07, result_07 = best_time(lambda: voc_evaluate(gt, dets, names), repeats, warmup=False)
    fast_10, result_10 = best_time(lambda: voc_evaluate(gt, dets, names, use_07_metric=False),
                                   repeats, warmup=False)
    print(f"voc_evaluate: {fast_07:.3f} s (voc07), {fast_10:.3f} s (voc10); "
          f"mAP {result_07['mAP']:.4f} / {result_10['mAP']:.4f}")

    # The baseline takes ~1 s per class here; --quick times 4 classes and scales to 20.
    labels = range(4) if quick else range(len(names))
    start = time.perf_counter()
    baseline_ap = {label: devkit_voc_eval(gt, dets, label) for label in labels}
    baseline = (time.perf_counter() - start) * len(names) / len(labels)
    gap = max(abs(baseline_ap[label] - result_07["ap"][names[label]]) for label in labels)
    scaled = f" (scaled from {len(labels)} classes)" if quick else ""
    print(f"devkit-style loop baseline: {baseline:.2f} s{scaled} (voc07)")
    print(f"speed-up: {baseline / fast_07:.0f}x; largest AP difference {gap:.1e}")
    under = fast_07 < TARGET_SECONDS
    print(f"under {TARGET_SECONDS:.0f} s: {'yes' if under else 'NO'}")
    return {"voc_evaluate_s": fast_07, "voc_evaluate_voc10_s": fast_10, "baseline_s": baseline,
            "baseline_scaled": quick, "ratio": baseline / fast_07, "max_ap_difference": gap,
            "num_detections": num_dets, "under_target": under}
