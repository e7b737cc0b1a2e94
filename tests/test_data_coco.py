"""COCODataset: a round trip through a small JSON written here, and the bad-input cases."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd.data import COCODataset, DataError

CATEGORIES = [{"id": 12, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]

@pytest.fixture(autouse=True)
def info_logs(caplog):
    """Data set summaries and generation messages are logged at INFO by the ssd.data loggers."""
    caplog.set_level(logging.INFO, logger="ssd")



def coco_json(annotations, images=None) -> dict:
    images = images or [
        {"id": 5, "file_name": "a.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "b.png", "width": 40, "height": 40},
        {"id": 9, "file_name": "c.jpg", "width": 20, "height": 10},  # no annotations
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


ANNOTATIONS = [
    {"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 5, 30, 20], "iscrowd": 0, "area": 600},
    {"id": 2, "image_id": 5, "category_id": 12, "bbox": [0, 0, 50, 50], "iscrowd": 1,
     "area": 2500},
    {"id": 3, "image_id": 2, "category_id": 7, "bbox": [4.5, 8, 20, 10], "iscrowd": 0,
     "area": 200},
    {"id": 4, "image_id": 5, "category_id": 12, "bbox": [60, 10, 20, 30], "area": 600},
]


def write_coco(tmp_path: Path, data: dict, skip_images=()) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for info in data["images"]:
        if info["file_name"] not in skip_images:
            image = np.full((info["height"], info["width"], 3), info["id"], np.uint8)
            cv2.imwrite(str(images / info["file_name"]), image)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, images


def test_round_trip(tmp_path, caplog):
    ann_file, image_dir = write_coco(tmp_path, coco_json(ANNOTATIONS))
    ds = COCODataset(ann_file, image_dir)
    assert "loading annotations" not in caplog.text
    assert ds.class_names == ["car", "train", "kite"]  # by increasing category id
    assert ds.label_to_category_id == [3, 7, 12]
    assert ds.category_id_to_label == {3: 0, 7: 1, 12: 2}
    assert ds.image_ids == ["2", "5", "9"] and ds.coco_image_ids == [2, 5, 9]
    assert ds.coco.loadImgs(5)[0]["file_name"] == "a.jpg"

    ann = ds.get_annotation(1)  # image 5: xywh -> xyxy pixels, crowd reported as difficult
    assert (ann["width"], ann["height"]) == (100, 50)
    np.testing.assert_array_equal(ann["boxes"], [[10, 5, 40, 25], [0, 0, 50, 50], [60, 10, 80, 40]])
    np.testing.assert_array_equal(ann["labels"], [0, 2, 2])
    np.testing.assert_array_equal(ann["difficult"], [False, True, False])

    image, target = ds[1]  # crowd left out, normalised by the image size
    assert image.shape == (50, 100, 3) and image[0, 0, 0] == 5
    np.testing.assert_allclose(target, [[0.1, 0.1, 0.4, 0.5, 0], [0.6, 0.2, 0.8, 0.8, 2]],
                               atol=1e-7)
    np.testing.assert_allclose(ds[0][1], [[4.5 / 40, 0.2, 24.5 / 40, 0.45, 1]], atol=1e-7)
    assert ds[2][1].shape == (0, 5)  # empty image kept by default

    # back to COCO results: label -> category id, xyxy -> xywh, equal to the input
    for index in range(len(ds)):
        ann = ds.get_annotation(index)
        for box, label in zip(ann["boxes"], ann["labels"]):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            original = [a for a in ANNOTATIONS if a["image_id"] == int(ann["image_id"])
                        and a["category_id"] == ds.label_to_category_id[label]
                        and np.allclose(a["bbox"], xywh)]
            assert len(original) == 1


def test_keep_empty_false_leaves_out_images_without_objects(tmp_path, caplog):
    only_crowd = [dict(ANNOTATIONS[1], image_id=2, id=10)]
    ann_file, image_dir = write_coco(tmp_path, coco_json(ANNOTATIONS[:1] + only_crowd))
    ds = COCODataset(ann_file, image_dir, keep_empty=False)
    assert ds.image_ids == ["5"] and ds.report.empty_removed == 2
    assert "2 images without objects left out" in caplog.text


def test_missing_and_invalid_annotation_file(tmp_path):
    with pytest.raises(DataError, match=r"COCO annotation file not found: .*nope\.json"):
        COCODataset(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        COCODataset(bad, tmp_path)


def test_unknown_category_lists_known(tmp_path):
    data = coco_json(ANNOTATIONS + [{"id": 8, "image_id": 9, "category_id": 99,
                                     "bbox": [1, 1, 2, 2], "iscrowd": 0}])
    ann_file, image_dir = write_coco(tmp_path, data)
    with pytest.raises(DataError) as info:
        COCODataset(ann_file, image_dir)
    message = str(info.value)
    assert "instances.json" in message and "unknown category_id 99" in message
    assert "known categories: 3=car, 7=train, 12=kite" in message
    ds = COCODataset(ann_file, image_dir, skip_bad=True, verbose=False)
    assert ds.image_ids == ["2", "5"] and ds.report.skipped == {"unknown class": 1}


def test_missing_bbox_field(tmp_path):
    data = coco_json([{"id": 1, "image_id": 2, "category_id": 3, "iscrowd": 0}])
    ann_file, image_dir = write_coco(tmp_path, data)
    with pytest.raises(DataError, match=r"instances\.json: image 2: annotation 1 needs a bbox"):
        COCODataset(ann_file, image_dir)


def test_missing_image_file(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, coco_json(ANNOTATIONS), skip_images=("b.png",))
    with pytest.raises(DataError, match=r"Image file not found: .*b\.png"):
        COCODataset(ann_file, image_dir)
    ds = COCODataset(ann_file, image_dir, skip_bad=True, verbose=False)
    assert ds.image_ids == ["5", "9"] and ds.report.skipped == {"missing image": 1}


def test_boxes_outside_and_zero_size(tmp_path):
    data = coco_json([
        {"id": 1, "image_id": 2, "category_id": 3, "bbox": [-4, 30, 20, 20], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 3, -1], "iscrowd": 0},
    ])
    ann_file, image_dir = write_coco(tmp_path, data)
    ds = COCODataset(ann_file, image_dir, verbose=False)
    assert ds.report.clipped == 1 and ds.report.degenerate == 2
    np.testing.assert_array_equal(ds.get_annotation(0)["boxes"], [[0, 30, 16, 40]])
