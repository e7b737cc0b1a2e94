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
from ssd.ops.reference import devkit_voc_eval

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
