import contextlib
import io
import math
import re

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd.evaluation import (
    COCO_STAT_NAMES,
    check_has_images,
    coco_evaluate,
    evaluate_detections,
    ground_truth_pixels,
    load_voc_results,
    plot_pr_curves,
    voc_ap,
    voc_evaluate,
    write_voc_results,
)


def _gt(boxes, labels, difficult=None):
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return {"boxes": boxes, "labels": np.asarray(labels, dtype=int), "difficult": difficult}


def _dets(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, dtype=float).reshape(-1, 4),
            "scores": np.asarray(scores, dtype=float), "labels": np.asarray(labels, dtype=int)}


# ---------------------------------------------------------------- hand-computed VOC cases

SQUARE = [0, 0, 9, 9]  # 10 x 10 inclusive pixels


def _hand_case():
    """Class "a": TP, duplicate FP, difficult (ignored), FP on an image without ground truth,
    TP. Class "b": ground truth, no detections. "c": only difficult ground truth. "d": none.
    """
    gt = {
        "img1": _gt([SQUARE, [20, 20, 29, 29], [40, 40, 60, 60]], [0, 0, 2], [False, True, True]),
        "img2": _gt([SQUARE, [50, 50, 80, 80]], [0, 1]),
        "img3": _gt(np.zeros((0, 4)), []),  # no ground truth at all
    }
    dets = {
        "img1": _dets([SQUARE, SQUARE, [20, 20, 29, 29], [40, 40, 60, 60]],
                      [0.9, 0.8, 0.7, 0.4], [0, 0, 0, 2]),
        "img3": _dets([SQUARE, [0, 0, 5, 5]], [0.6, 0.3], [0, 3]),
        "img2": _dets([SQUARE], [0.5], [0]),
    }
    return gt, dets


def test_hand_case_07_metric():
    gt, dets = _hand_case()
    result = voc_evaluate(gt, dets, ["a", "b", "c", "d"], use_07_metric=True)
    # "a" in score order (difficult one dropped): TP, FP, FP, TP with 2 positives:
    # recall .5 .5 .5 1, precision 1 .5 1/3 .5 -> 6 points at 1 (r <= .5), 5 at .5.
    np.testing.assert_allclose(result["recall"]["a"], [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(result["precision"]["a"], [1.0, 0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(result["scores"]["a"], [0.9, 0.8, 0.6, 0.5])
    assert result["ap"]["a"] == pytest.approx((6 * 1.0 + 5 * 0.5) / 11, abs=1e-12)
    assert result["ap"]["b"] == 0.0  # ground truth but no detections: counted as 0
    assert math.isnan(result["ap"]["c"]) and math.isnan(result["ap"]["d"])
    assert result["excluded"] == ["c", "d"]
    assert result["mAP"] == pytest.approx((8.5 / 11 + 0.0) / 2, abs=1e-12)
    assert result["num_gt"] == {"a": 2, "b": 1, "c": 0, "d": 0}
    assert result["num_det"] == {"a": 5, "b": 0, "c": 1, "d": 1}
    assert result["metric"] == "voc07"


def test_hand_case_area_metric():
    gt, dets = _hand_case()
    result = voc_evaluate(gt, dets, ["a", "b", "c", "d"], use_07_metric=False)
    # Envelope: precision 1 up to recall .5, then .5 up to 1 -> .5 * 1 + .5 * .5.
    assert result["ap"]["a"] == pytest.approx(0.75, abs=1e-12)
    assert result["mAP"] == pytest.approx(0.375, abs=1e-12)
    assert result["metric"] == "voc10"


@pytest.mark.parametrize(
    "box, is_match",
    [
        ([0, 0, 9, 4.5], True),  # inclusive IoU 10*5.5/100 = .55; continuous 40.5/81 = .5
        ([0, 0, 9, 4], False),  # inclusive IoU exactly .5: a match needs IoU > threshold
        ([0, 0, 9, 5], True),  # inclusive IoU .6
    ],
)
def test_iou_uses_inclusive_pixels_and_strict_threshold(box, is_match):
    gt = {0: _gt([SQUARE], [0])}
    result = voc_evaluate(gt, {0: _dets([box], [0.9], [0])}, ["a"])
    assert result["ap"]["a"] == (1.0 if is_match else 0.0)


def test_detection_takes_highest_iou_ground_truth_even_if_already_matched():
    # Both ground truths overlap the second detection by more than .5; it picks the first
    # (IoU .91, already taken) and is a FP although the second (IoU .75) is free (devkit).
    gt = {0: _gt([SQUARE, [2, 0, 11, 9]], [0, 0])}
    dets = {0: _dets([SQUARE, [0, 0, 10, 9], [2, 0, 11, 9]], [0.9, 0.8, 0.7], [0, 0, 0])}
    result = voc_evaluate(gt, dets, ["a"], use_07_metric=False)
    np.testing.assert_allclose(result["precision"]["a"], [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(result["recall"]["a"], [0.5, 0.5, 1.0])
    assert result["ap"]["a"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-12)


def test_other_class_ground_truth_is_not_matched():
    gt = {0: _gt([SQUARE], [1])}
    result = voc_evaluate(gt, {0: _dets([SQUARE], [0.9], [0])}, ["a", "b"])
    assert result["excluded"] == ["a"] and result["ap"]["b"] == 0.0
    assert result["precision"]["a"].tolist() == [0.0]  # a FP of "a"


def test_voc_ap_points():
    recall = np.array([0.3, 0.6, 0.7])
    precision = np.array([1.0, 0.5, 0.4])
    # 11-point at the published np.arange(0.0, 1.1, 0.1): its "0.3", "0.6" and "0.7" are
    # 0.30000000000000004 etc., just above the recalls 0.3, 0.6 and 0.7 here. So r = 0..0.2
    # -> 1 (3 points), "0.3".."0.5" -> .5 (3), "0.6" -> .4, "0.7".."1" -> 0.
    assert voc_ap(recall, precision, True) == pytest.approx((3 + 1.5 + 0.4) / 11, abs=1e-12)
    assert voc_ap(recall, precision, False) == pytest.approx(0.3 + 0.15 + 0.04, abs=1e-12)
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0


def test_bad_inputs_are_named():
    gt = {0: _gt([SQUARE], [0])}
    with pytest.raises(ValueError, match="image id"):
        voc_evaluate(gt, {7: _dets([SQUARE], [0.5], [0])}, ["a"])
    with pytest.raises(ValueError, match="label 3 outside"):
        voc_evaluate(gt, {0: _dets([SQUARE], [0.5], [3])}, ["a"])
    with pytest.raises(ValueError, match="same length"):
        voc_evaluate(gt, {0: _dets([SQUARE], [0.5, 0.4], [0])}, ["a"])
    with pytest.raises(ValueError, match="NaN"):
        voc_evaluate(gt, {0: _dets([SQUARE], [float("nan")], [0])}, ["a"])


def test_degenerate_boxes_score_as_misses():
    empty = [0, 0, -1, -1]  # zero width and height in inclusive pixels
    gt = {0: _gt([empty, SQUARE], [0, 0])}
    result = voc_evaluate(gt, {0: _dets([empty, SQUARE], [0.9, 0.8], [0, 0])}, ["a"])
    assert result["precision"]["a"].tolist() == [0.0, 0.5]


# ------------------------------------------- agreement with a straightforward implementation


def _reference_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1.0, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1.0, 0.0)
    inter = iw * ih
    union = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (
        b[3] - b[1] + 1.0) - inter
    return inter / union


PUBLISHED_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)  # what the published voc_eval uses
EXACT_TENTHS = np.arange(11) / 10.0


def _published_voc_eval(gt, dets, label, iou_threshold, use_07_metric,
                        recall_points=PUBLISHED_RECALL_POINTS):
    """One class's AP as the published ``voc_eval`` (py-faster-rcnn, ssd.pytorch's eval.py,
    mmdetection) computes it, step by step in plain loops; NaN when the class has no
    non-difficult ground truth (where the original divides by zero).

    The only liberty: detections of equal score keep their input order (a stable sort),
    where the original's ``np.argsort(-confidence)`` leaves the order of ties unspecified.
    """
    class_recs, num_positive = {}, 0
    for image_id, truth in gt.items():
        mask = np.asarray(truth["labels"]) == label
        class_recs[image_id] = {"bbox": np.asarray(truth["boxes"])[mask],
                                "difficult": np.asarray(truth["difficult"])[mask],
                                "det": [False] * int(mask.sum())}
        num_positive += int((~class_recs[image_id]["difficult"]).sum())
    image_ids, confidence, boxes = [], [], []
    for image_id in gt:
        found = dets.get(image_id)
        if found is None:
            continue
        for box, score, found_label in zip(found["boxes"], found["scores"], found["labels"]):
            if found_label == label:
                image_ids.append(image_id)
                confidence.append(float(score))
                boxes.append(list(box))
    order = sorted(range(len(confidence)), key=lambda k: -confidence[k])  # stable
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        record = class_recs[image_ids[k]]
        overlap_max, j_max = -np.inf, -1
        for j, gt_box in enumerate(record["bbox"]):
            overlap = _reference_iou(boxes[k], gt_box)
            if overlap > overlap_max:  # first ground truth wins ties, as np.argmax
                overlap_max, j_max = overlap, j
        if overlap_max > iou_threshold:
            if not record["difficult"][j_max]:
                if not record["det"][j_max]:
                    tp[d] = 1.0
                    record["det"][j_max] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if num_positive == 0:
        return float("nan")
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(num_positive)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in recall_points:
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _random_case(seed, num_images=40, num_classes=4):
    rng = np.random.default_rng(seed)
    gt, dets = {}, {}
    for image_id in range(num_images):
        count = int(rng.integers(0, 5))
        corner = rng.integers(0, 80, (count, 2))
        boxes = np.concatenate([corner, corner + rng.integers(5, 40, (count, 2))], 1)
        if count and rng.random() < 0.3:
            boxes[-1] = boxes[0]  # identical ground truths: IoU ties go to the first
        labels = rng.integers(0, num_classes, count)
        gt[f"im{image_id}"] = _gt(boxes, labels, rng.random(count) < 0.25)
        if rng.random() < 0.15:
            continue  # no detections for this image
        copies = rng.integers(0, max(count, 1), int(rng.integers(0, 8))) if count else []
        near = boxes[copies] + rng.normal(0, 3, (len(copies), 4)) if count else np.zeros((0, 4))
        near_labels = labels[copies] if count else np.zeros(0, int)
        other = int(rng.integers(0, 6))
        corner = rng.uniform(0, 80, (other, 2))
        far = np.concatenate([corner, corner + rng.uniform(3, 40, (other, 2))], 1)
        scores = rng.random(len(near_labels) + other)
        if seed % 2:
            scores = np.round(scores, 1)  # many ties: broken by input order on both sides
        dets[f"im{image_id}"] = _dets(np.concatenate([near, far]), scores,
                                      np.concatenate([near_labels,
                                                      rng.integers(0, num_classes, other)]))
    return gt, dets


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("use_07_metric", [True, False])
def test_agrees_with_straightforward_implementation(seed, use_07_metric):
    names = ["a", "b", "c", "d"]
    gt, dets = _random_case(seed)
    threshold = 0.5 if seed < 6 else 0.3
    result = voc_evaluate(gt, dets, names, threshold, use_07_metric)
    expected = {n: _published_voc_eval(gt, dets, k, threshold, use_07_metric)
                for k, n in enumerate(names)}
    for name in names:
        if math.isnan(expected[name]):
            assert math.isnan(result["ap"][name]) and name in result["excluded"]
        else:
            assert abs(result["ap"][name] - expected[name]) <= 1e-12, name
    kept = [v for v in expected.values() if not math.isnan(v)]
    assert abs(result["mAP"] - sum(kept) / len(kept)) <= 1e-12


def _tenths_case(seed):
    """Class "a" with 10 * m ground truth objects (one per image) whose recall, in score
    order, stops exactly at 3/10, 6/10 and 7/10 before false positives; class "b" is noise.

    Detections of "a" in decreasing score: 3m hits, k1 >= 1 misses, 3m hits, k2 misses,
    m hits, k3 misses, then up to 3m further hits and a few misses. Hits are copies of a
    ground-truth box (IoU 1), misses lie on an image corner without ground truth (IoU 0).
    Precision is 1 exactly at recall 0.3 and below 1 at every later recall, so the published
    point "0.3" (0.30000000000000004) and an exact 0.3 give different 11-point APs.
    """
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 4))
    num_gt = 10 * m
    corners = rng.integers(20, 60, (num_gt, 2))
    gt_boxes = np.concatenate([corners, corners + rng.integers(10, 30, (num_gt, 2))], 1)
    gt = {f"im{i}": _gt(gt_boxes[i:i + 1], [0]) for i in range(num_gt)}
    hits_per_run = [3 * m, 3 * m, m, int(rng.integers(0, 3 * m + 1))]
    misses_per_run = [int(rng.integers(1, 4)) for _ in hits_per_run]
    flags = [flag for hits, misses in zip(hits_per_run, misses_per_run)
             for flag in [True] * hits + [False] * misses]
    hit_images = iter(rng.permutation(num_gt))
    per_image = {image_id: ([], []) for image_id in gt}  # image -> (boxes, labels)
    scores = {image_id: [] for image_id in gt}
    for flag, score in zip(flags, np.linspace(0.99, 0.05, len(flags))):
        image = int(next(hit_images)) if flag else int(rng.integers(0, num_gt))
        box = gt_boxes[image] if flag else np.array([0, 0, 5, 5])
        per_image[f"im{image}"][0].append(box)
        per_image[f"im{image}"][1].append(0)
        scores[f"im{image}"].append(score)
    for image_id in gt:  # class "b": random boxes, no ground truth of its own on most images
        for _ in range(int(rng.integers(0, 3))):
            corner = rng.uniform(0, 80, 2)
            per_image[image_id][0].append(np.concatenate([corner, corner + rng.uniform(5, 30, 2)]))
            per_image[image_id][1].append(1)
            scores[image_id].append(float(rng.random()))
        if rng.random() < 0.3:
            gt[image_id] = _gt(np.concatenate([gt[image_id]["boxes"], [[60, 60, 90, 90]]]), [0, 1])
    dets = {image_id: _dets(np.array(boxes, dtype=float).reshape(-1, 4), scores[image_id], labels)
            for image_id, (boxes, labels) in per_image.items() if labels}
    return gt, dets


@pytest.mark.parametrize("seed", range(6))
def test_recall_exactly_on_published_points_matches_voc_eval(seed):
    """Recalls of exactly 3/10, 6/10 and 7/10: the published voc_eval's 11 points (0.3, 0.6 and
    0.7 are not exact tenths there) decide the AP, and voc_evaluate agrees to 1e-12."""
    gt, dets = _tenths_case(seed)
    names = ["a", "b"]
    recall = voc_evaluate(gt, dets, names)["recall"]["a"]
    assert {0.3, 0.6, 0.7} <= set(recall.tolist())  # the case does hit the points exactly
    for use_07_metric in (True, False):
        result = voc_evaluate(gt, dets, names, use_07_metric=use_07_metric)
        for label, name in enumerate(names):
            expected = _published_voc_eval(gt, dets, label, 0.5, use_07_metric)
            if math.isnan(expected):
                assert math.isnan(result["ap"][name])
            else:
                assert abs(result["ap"][name] - expected) <= 1e-12, (name, use_07_metric)
    exact_tenths = _published_voc_eval(gt, dets, 0, 0.5, True, recall_points=EXACT_TENTHS)
    assert abs(voc_evaluate(gt, dets, names)["ap"]["a"] - exact_tenths) > 1e-3


# ------------------------------------------------------------------ results files and plot


def test_results_files_are_1_based_and_round_trip(tmp_path):
    gt, dets = _hand_case()
    names = ["a", "b", "c", "d"]
    paths = write_voc_results(dets, list(gt), names, tmp_path)
    assert [p.name for p in paths] == [f"comp4_det_test_{n}.txt" for n in names]
    lines = paths[0].read_text().splitlines()
    assert lines[0] == "img1 0.900000 1.00 1.00 10.00 10.00"  # 0-based frame + 1
    assert [line.split()[0] for line in lines] == ["img1", "img1", "img1", "img2", "img3"]
    assert paths[1].read_text() == ""  # every class gets a file
    loaded = load_voc_results(tmp_path, names)
    np.testing.assert_allclose(loaded["img1"]["boxes"][0], SQUARE)
    for metric in (True, False):
        again = voc_evaluate(gt, loaded, names, use_07_metric=metric)
        assert again["ap"]["a"] == voc_evaluate(gt, dets, names, use_07_metric=metric)["ap"]["a"]


def test_results_from_a_list_aligned_with_ids(tmp_path):
    records = [_dets([SQUARE], [0.5], [1]), _dets(np.zeros((0, 4)), [], [])]
    paths = write_voc_results(records, ["000001", "000002"], ["a", "b"], tmp_path)
    assert paths[1].read_text() == "000001 0.500000 1.00 1.00 10.00 10.00\n"
    with pytest.raises(ValueError, match="same length"):
        write_voc_results(records, ["000001"], ["a", "b"], tmp_path)


def test_plot_pr_curves_writes_a_png(tmp_path):
    gt, dets = _random_case(3)
    result = voc_evaluate(gt, dets, ["a", "b", "c", "d"])
    path = plot_pr_curves(result, tmp_path / "plots" / "pr.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.shape[:2] == (600, 900) and pixels[..., :3].std() > 0.05


# ----------------------------------------------------------------------------------- COCO

CATEGORY_IDS = [1, 5, 9]  # non-contiguous, as in COCO


def _coco_gt():
    boxes = {  # image id -> [(category id, x, y, w, h)]; areas small, medium and large
        10: [(1, 10, 10, 20, 20), (5, 100, 100, 80, 60)],
        11: [(9, 50, 40, 200, 150), (1, 300, 200, 25, 30), (5, 5, 5, 60, 60)],
        12: [(9, 0, 0, 400, 300)],
    }
    annotations = [
        {"id": n + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
         "area": w * h, "iscrowd": 0}
        for n, (image_id, cat, x, y, w, h) in enumerate(
            (i, *row) for i, rows in boxes.items() for row in rows)
    ]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 640, "height": 480} for i in boxes],
        "categories": [{"id": c, "name": f"cat{c}"} for c in CATEGORY_IDS],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_dets():
    """xyxy detections with 0-based labels: exact, shifted (IoU .57, .82), one wrong class."""
    return {
        10: _dets([[13, 13, 33, 33], [100, 100, 180, 160], [12, 11, 31, 30]],
                  [0.9, 0.8, 0.3], [0, 1, 0]),
        11: _dets([[55, 45, 250, 190], [300, 200, 325, 230], [5, 5, 65, 65]],
                  [0.7, 0.6, 0.5], [2, 1, 1]),
        12: _dets(np.zeros((0, 4)), [], []),
    }


def test_coco_matches_cocoeval_called_directly():
    coco = _coco_gt()
    stats = coco_evaluate(coco, _coco_dets(), CATEGORY_IDS)
    results = []  # the same detections converted by hand: xywh, original category ids
    for image_id, d in _coco_dets().items():
        for (x1, y1, x2, y2), s, lab in zip(d["boxes"], d["scores"], d["labels"]):
            results.append({"image_id": image_id, "category_id": CATEGORY_IDS[lab],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert list(stats)[:12] == list(COCO_STAT_NAMES)
    np.testing.assert_allclose([stats[n] for n in COCO_STAT_NAMES], evaluator.stats, atol=1e-12)
    assert 0 < stats["AP"] < 1 and stats["AP50"] > stats["AP75"]
    assert set(stats["per_class"]) == {"cat1", "cat5", "cat9"}


def test_coco_perfect_and_empty_detections():
    coco = _coco_gt()
    perfect = {}
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                  a["bbox"][1] + a["bbox"][3]] for a in anns]
        labels = [CATEGORY_IDS.index(a["category_id"]) for a in anns]
        perfect[image_id] = _dets(boxes, np.linspace(0.9, 0.5, len(anns)), labels)
    stats = coco_evaluate(coco, perfect, {k: c for k, c in enumerate(CATEGORY_IDS)})
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    empty = coco_evaluate(coco, {i: _dets(np.zeros((0, 4)), [], []) for i in coco.getImgIds()},
                          CATEGORY_IDS)
    assert empty["AP"] == 0.0 and empty["AR100"] == 0.0
    only_12 = coco_evaluate(coco, {12: perfect[12]}, CATEGORY_IDS)  # the keys choose the images
    assert only_12["AP"] == pytest.approx(1.0) and only_12["APs"] == -1.0
    with pytest.raises(ValueError, match="not in the COCO"):
        coco_evaluate(coco, {99: perfect[12]}, CATEGORY_IDS)


# ------------------------------------------------------- data set glue and evaluation loader


class _TinySet:
    """Two-image stand-in for a data set's evaluator view (VOC frame: 1-based pixels)."""

    coordinate_origin = 1.0
    class_names = ["a"]

    def __init__(self):
        self.annotations = [
            dict(image_id="one", width=100, height=50, boxes=np.array([[1, 1, 50, 25]], np.float32),
                 labels=np.array([0]), difficult=np.array([False])),
            dict(image_id="two", width=100, height=50, boxes=np.array([[51, 26, 100, 50]], np.float32),
                 labels=np.array([0]), difficult=np.array([False])),
        ]

    def __len__(self):
        return len(self.annotations)

    def get_annotation(self, index):
        return self.annotations[index]


def test_evaluate_detections_scores_only_the_images_given():
    """Image "two" has no key (e.g. skipped): its ground truth is not counted as missed."""
    dataset = _TinySet()
    found = {0: {"boxes": np.array([[0.0, 0.0, 0.49, 0.48]], np.float32),  # (xml - 1) / size
                 "scores": np.array([0.9], np.float32), "labels": np.array([0])}}
    result = evaluate_detections(dataset, found, "voc07")
    assert result["num_gt"] == {"a": 1} and result["mAP"] == pytest.approx(1.0)
    both = ground_truth_pixels(dataset)
    assert list(both) == ["one", "two"] and both["one"]["boxes"].tolist() == [[0, 0, 49, 24]]
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate_detections(dataset, found, "voc12")


def test_empty_data_set_error_names_the_split_file(tmp_path):
    from ssd.data import VOCDataset

    split = tmp_path / "VOCx" / "ImageSets" / "Main" / "test.txt"
    split.parent.mkdir(parents=True)
    split.write_text("\n")
    dataset = VOCDataset(tmp_path, [("x", "test")], class_names=["a"], verbose=False)
    with pytest.raises(ValueError, match=re.escape(str(split))):
        check_has_images(dataset)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_eval_loader_yields_no_sample_for_an_unreadable_image(tmp_path, num_workers):
    """skip_bad: the unreadable image comes back as a SkippedImage naming the file (also from a
    worker process), the others as samples; without skip_bad the read error is raised."""
    from ssd.data import BaseTransform, DataError, LoadFailure, VOCDataset, make_shapes
    from ssd.engine.inference import SkippedImage, make_eval_loader

    make_shapes(tmp_path, num_train=1, num_test=3, image_size=64, seed=0, progress=False)
    names = ["circle", "square", "triangle", "star", "hexagon", "cross"]
    dataset = VOCDataset(tmp_path, [("shapes", "test")], class_names=names, verbose=False,
                         skip_bad=True)
    dataset.records[1].image_path.write_bytes(b"garbage")
    batches = list(make_eval_loader(dataset, BaseTransform(32), batch_size=2,
                                    num_workers=num_workers))
    assert [batch.indices.tolist() for batch in batches] == [[0], [2]]
    assert batches[0].images.shape == (1, 3, 32, 32)
    assert batches[0].skipped == [SkippedImage(1, str(dataset.records[1].image_path),
                                               batches[0].skipped[0].message)]
    assert str(dataset.records[1].image_path) in batches[0].skipped[0].message
    dataset.skip_bad = False  # the failure reaches the main process, where it is raised
    failures = [batch for batch in make_eval_loader(dataset, BaseTransform(32), batch_size=2,
                                                    num_workers=num_workers)
                if isinstance(batch, LoadFailure)]
    assert len(failures) == 1
    with pytest.raises(DataError, match="Cannot decode"):
        raise failures[0].error()


def test_predict_batches_records_skipped_images_and_evaluated_indices():
    from ssd.engine.inference import EvalBatch, SkippedImage, predict_batches
    from ssd.postprocess import PostProcessor

    class Model(torch.nn.Module):  # 2 priors, background + 1 class, prior 1 scores high
        priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])

        def forward(self, images):
            batch = images.shape[0]
            conf = torch.tensor([[4.0, 0.0], [0.0, 4.0]]).expand(batch, 2, 2)
            return torch.zeros(batch, 2, 4), conf

    skipped = SkippedImage(1, "b.jpg", "Cannot decode image b.jpg")
    loader = [EvalBatch(torch.zeros(1, 3, 8, 8), torch.tensor([0]), [skipped]),
              EvalBatch(None, torch.zeros(0, dtype=torch.long), []),
              (torch.zeros(2, 3, 8, 8), [None, None], torch.tensor([2, 3]))]  # make_test_loader
    post = PostProcessor(score_threshold=0.5, nms_threshold=0.45, top_k=10, candidates_per_class=5,
                         variances=(0.1, 0.2))
    found = predict_batches(Model(), loader, "cpu", post, progress=False)
    assert sorted(found.detections) == [0, 2, 3] and found.skipped == [skipped]
    np.testing.assert_allclose(found.detections[3]["boxes"], [[0.5, 0.5, 1.0, 1.0]])
    assert found.detections[0]["labels"].tolist() == [0]
