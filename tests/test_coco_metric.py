"""The COCO metric on data sets that are not COCO files: VOC- and YOLO-layout sets written here,
scored with `evaluate_detections(..., "coco")`, through ssd-eval --metric coco and in training."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.cocoeval import Params
from test_data_yolo import write_set as write_yolo_set

from ssd.cli import eval as eval_script
from ssd.config import load_config
from ssd.data import VOCDataset, YOLODataset
from ssd.engine.metrics_log import read_metrics
from ssd.evaluation import evaluate_detections
from ssd.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SSD7_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"
VOC_YEAR = "tiny"
CLASSES = ["cat", "dog"]
COCO_TABLE_ROWS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_PARAMS = Params(iouType="bbox")  # COCOeval's IoU and recall thresholds

# stem -> (width, height, objects as (class, xmin, ymin, xmax, ymax, difficult), 1-based pixels)
VOC_IMAGES = {
    "a": (100, 80, [("cat", 11, 11, 60, 60, False), ("dog", 70, 5, 95, 75, False)]),
    "b": (90, 90, [("dog", 21, 31, 70, 80, False), ("cat", 5, 5, 14, 14, True)]),
    "c": (120, 60, [("cat", 61, 11, 110, 60, False)]),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def write_voc_set(root: Path, images=VOC_IMAGES, split: str = "test") -> Path:
    """A VOCdevkit layout under `root`: VOC{VOC_YEAR}/{JPEGImages, Annotations, ImageSets/Main}."""
    folder = root / f"VOC{VOC_YEAR}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for stem, (width, height, objects) in images.items():
        cv2.imwrite(str(folder / "JPEGImages" / f"{stem}.jpg"), np.full((height, width, 3), 90, np.uint8))
        parts = [f"<annotation><size><width>{width}</width><height>{height}</height>"
                 "<depth>3</depth></size>"]
        for name, xmin, ymin, xmax, ymax, difficult in objects:
            parts.append(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
                         f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                         f"<ymax>{ymax}</ymax></bndbox></object>")
        (folder / "Annotations" / f"{stem}.xml").write_text("".join(parts) + "</annotation>")
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in images))
    return root


def voc_set(root: Path, images=VOC_IMAGES) -> VOCDataset:
    return VOCDataset(write_voc_set(root, images), [(VOC_YEAR, "test")], class_names=CLASSES,
                      verbose=False)


def detections_from_ground_truth(dataset, skip_difficult: bool = False) -> dict:
    """Each image's ground truth as normalised detections ((value - origin) / size), scores
    falling in data set order: the detections of a perfect detector."""
    detections, score = {}, 1.0
    for index in range(len(dataset)):
        ann = dataset.get_annotation(index)
        keep = ~ann["difficult"] if skip_difficult else np.ones(len(ann["labels"]), bool)
        scale = np.array([ann["width"], ann["height"]] * 2, np.float32)
        boxes = (ann["boxes"][keep] - dataset.coordinate_origin) / scale
        scores = score - 0.01 * np.arange(1, len(boxes) + 1, dtype=np.float32)
        score = float(scores[-1]) if len(scores) else score
        detections[index] = {"boxes": boxes.astype(np.float32), "scores": scores,
                             "labels": ann["labels"][keep]}
    return detections


def ap_at(iou: float, missed_ap: float) -> float:
    """AP@[.5:.95] when one detection overlaps its object by `iou` and every other one is
    exact: AP 1 at the thresholds `iou` reaches, `missed_ap` at the others."""
    thresholds = COCO_PARAMS.iouThrs
    return float(np.mean(np.where(thresholds <= iou, 1.0, missed_ap)))


def inclusive_iou_of_shift(side: int, shift: int) -> float:
    """IoU of two side x side boxes of inclusive pixels, one moved `shift` pixels along x."""
    return (side - shift) * side / (2 * side * side - (side - shift) * side)


# ------------------------------------------------------------------------ the metric itself


@pytest.mark.parametrize("layout", ["voc", "yolo"])
def test_detections_equal_to_the_ground_truth_score_one(tmp_path, layout):
    dataset = (voc_set(tmp_path) if layout == "voc"
               else YOLODataset(write_yolo_set(tmp_path), "train", verbose=False))
    result = evaluate_detections(dataset, detections_from_ground_truth(dataset, skip_difficult=True),
                                 "coco")
    stats = result["coco"]
    assert [stats["AP"], stats["AP50"], stats["AP75"]] == pytest.approx([1.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx(1.0)
    assert result["ap"] == pytest.approx({name: 1.0 for name in dataset.class_names})


def test_a_detection_of_a_difficult_object_is_neither_counted_nor_penalised(tmp_path):
    """Image b's difficult cat: a detection on it is no false positive (iscrowd=1), and not
    detecting it is no miss; both runs score AP 1."""
    dataset = voc_set(tmp_path)
    with_difficult = evaluate_detections(dataset, detections_from_ground_truth(dataset), "coco")
    without = evaluate_detections(dataset, detections_from_ground_truth(dataset, True), "coco")
    assert with_difficult["coco"]["AP"] == pytest.approx(1.0)
    assert without["coco"]["AP"] == pytest.approx(1.0)


def test_a_shift_to_iou_0_6_lowers_ap75_but_not_ap50(tmp_path):
    """Four objects; the one of 50 x 50 pixels in image a is detected 12 pixels to the right
    (inclusive IoU 38 / 62 = 0.61), last in score order. From IoU 0.65 on it is a false
    positive and its object a miss: precision 1 up to recall 3/4, nothing beyond."""
    dataset = voc_set(tmp_path)
    detections = detections_from_ground_truth(dataset, skip_difficult=True)
    shift = 12
    detections[0]["boxes"][0] += np.array([shift, 0, shift, 0]) / 100  # image a is 100 px wide
    detections[0]["scores"][0] = 0.1  # the lowest score
    iou = inclusive_iou_of_shift(50, shift)
    missed_ap = float(np.mean(COCO_PARAMS.recThrs <= 3 / 4))  # the recall points reached

    stats = evaluate_detections(dataset, detections, "coco")["coco"]
    assert 0.6 < iou < 0.65
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(missed_ap) and missed_ap < 1
    assert stats["AP"] == pytest.approx(ap_at(iou, missed_ap))


def test_voc_boxes_are_compared_in_inclusive_pixels(tmp_path):
    """One 10 x 10 pixel object (xmin 11 .. xmax 20) detected 2 pixels to the right: the
    devkit's IoU is 8 * 10 / 120 = 0.67, which passes the 0.65 threshold; counted with
    exclusive widths (9 pixels) it would be 0.64 and miss it. The object is small, so APs
    is AP and there is nothing medium or large to score (-1)."""
    dataset = voc_set(tmp_path, {"one": (50, 40, [("cat", 11, 11, 20, 20, False)])})
    detections = detections_from_ground_truth(dataset)
    detections[0]["boxes"][0] += np.array([2, 0, 2, 0]) / 50
    stats = evaluate_detections(dataset, detections, "coco")["coco"]
    expected = ap_at(inclusive_iou_of_shift(10, 2), missed_ap=0.0)
    assert expected == pytest.approx(0.4)
    assert stats["AP"] == pytest.approx(expected) and stats["APs"] == pytest.approx(expected)
    assert stats["APm"] == stats["APl"] == -1


# ------------------------------------------------------------------- ssd-eval and training


def ssd7_config(*overrides: str):
    """SSD7 at 160 px on the two-class sets written here, loaded in-process."""
    return load_config(SSD7_CONFIG, overrides=["model.num_classes=3", "data.num_workers=0",
                                               "test.batch_size=4", *overrides])


def voc_overrides(root: Path) -> list[str]:
    sets = json.dumps([[VOC_YEAR, "test"]])
    return ["data.format=voc", f"data.root={root}", f"data.class_names={json.dumps(CLASSES)}",
            f"data.train_sets={sets}", f"data.test_sets={sets}"]


def yolo_overrides(root: Path) -> list[str]:
    return ["data.format=yolo", f"data.root={root}", "data.class_names=null", "model.num_classes=4",
            "data.yolo.test_split=train"]


@pytest.mark.parametrize("layout", ["voc", "yolo"])
def test_eval_metric_coco_reports_the_coco_numbers(tmp_path, capsys, layout):
    data_root = tmp_path / "data"
    if layout == "voc":
        overrides, classes = voc_overrides(write_voc_set(data_root)), CLASSES
    else:
        overrides, classes = yolo_overrides(write_yolo_set(data_root)), ["cat", "dog", "bird"]
    cfg = ssd7_config(*overrides)
    torch.manual_seed(0)
    weights = tmp_path / "fresh.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, weights)
    out = tmp_path / "out"

    code = eval_script.main(["--weights", str(weights), "--metric", "coco", "--device", "cpu",
                             "--output", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())
    assert code == 0
    for row in COCO_TABLE_ROWS:
        assert any(line.split()[:1] == [row] for line in printed.splitlines()), row
    assert summary["metric"] == "coco" and 0.0 <= summary["mAP"] <= 1.0
    assert summary["coco"]["AP"] == summary["mAP"]
    assert set(COCO_TABLE_ROWS) <= set(summary["coco"])
    assert set(summary["ap"]) <= set(classes)


def test_training_evaluates_with_the_coco_metric_on_a_voc_set(tmp_path):
    from ssd.engine.trainer import Trainer

    cfg = ssd7_config(*voc_overrides(write_voc_set(tmp_path / "data")), "test.metric=coco",
                      "solver.batch_size=3", "solver.max_iter=2", "solver.warmup_iters=1",
                      "train.log_period=1", "train.checkpoint_period=2", "train.eval_period=2")
    trainer = Trainer.from_config(cfg, output_dir=tmp_path / "run", device="cpu", progress=False)
    trainer.train()
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["metric"] == "coco"
    coco = evals[0]["coco"]
    assert set(COCO_TABLE_ROWS) <= set(coco)
    assert 0.0 <= coco["AP"] <= 1.0 and coco["AP"] == evals[0]["mAP"]
    assert coco["APl"] is None  # no large object in the test set: COCO's -1, written as null
