"""VOC XML data sets outside the VOCdevkit layout: one folder of images and XML files,
Annotations/ + JPEGImages/ or annotations/ + images/ without split files; their train/test
split, written by training and read back by evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_data_voc import obj, write_truncated_jpeg, xml
from trainer_helpers import REPO_ROOT, train_main

from ssd.config import load_config
from ssd.data import DataError, build_dataset
from ssd.data.voc_layout import split_ids
from ssd.weights import build_model_from_weights

CLASSES = ["cat", "dog"]
# Layout name -> (annotation folder, image folder) relative to the data set folder.
LAYOUTS = {
    "flat": (".", "."),
    "Annotations+JPEGImages": ("Annotations", "JPEGImages"),
    "annotations+images": ("annotations", "images"),
}


def write_folder(root: Path, layout: str, count: int, start: int = 0) -> list[str]:
    """`count` images (48x40 PNG, lossless) with one XML each in `layout`; returns their ids."""
    annotations, images = (root / part for part in LAYOUTS[layout])
    annotations.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    ids = [f"img_{k:03d}" for k in range(start, start + count)]
    for k, image_id in enumerate(ids):
        name = CLASSES[k % len(CLASSES)]
        (annotations / f"{image_id}.xml").write_text(xml(48, 40, obj(name, (5, 6, 30, 28))))
        cv2.imwrite(str(images / f"{image_id}.png"), np.full((40, 48, 3), k, np.uint8))
    return ids


def folder_cfg(root: Path, **values):
    """The demo's SSD7 (128 px) config reading the VOC folder `root` (two classes)."""
    overrides = {"data.format": "voc", "data.root": str(root), "data.class_names": CLASSES,
                 "model.num_classes": len(CLASSES) + 1, "data.num_workers": 0, **values}
    return load_config(REPO_ROOT / "configs" / "shapes.yaml",
                       overrides=[f"{key}={json.dumps(value)}" for key, value in overrides.items()])


@pytest.mark.parametrize("layout, folder_name", [
    ("flat", "raccoons"),
    ("Annotations+JPEGImages", "cells"),
    ("annotations+images", "data"),
])  # fmt: skip
def test_folder_without_split_files_loads_split_by_val_fraction(tmp_path, layout, folder_name):
    root = tmp_path / folder_name
    ids = write_folder(root, layout, count=20)
    cfg = folder_cfg(root, **{"data.val_fraction": 0.25})
    train, test = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    assert len(test) == 5 and len(train) == 15  # 25 % of 20
    assert set(train.image_ids).isdisjoint(test.image_ids)
    assert sorted(train.image_ids + test.image_ids) == ids
    assert build_dataset(cfg, train=False).image_ids == test.image_ids  # the same every time
    image, target = train[0]
    assert image.shape == (40, 48, 3) and target.shape == (1, 5)
    assert test.report.name.endswith(f"{folder_name}/test")


def test_split_is_deterministic_disjoint_and_follows_val_fraction():
    ids = [f"{k:04d}" for k in range(103)]
    split = split_ids(ids, 0.2)
    assert split == split_ids(list(reversed(ids)), 0.2)  # the order of the listing does not matter
    assert len(split["test"]) == 21 and sorted(split["train"] + split["test"]) == ids
    assert set(split["train"]).isdisjoint(split["test"])
    assert split["test"] != ids[:21]  # shuffled, not the first names
    assert len(split_ids(ids[:3], 0.01)["test"]) == 1  # at least one test image
    assert len(split_ids(ids[:3], 0.99)["train"]) == 1  # at least one training image


def test_folder_with_image_sets_reads_the_named_splits(tmp_path):
    root = tmp_path / "VOC2007"  # data.root pointing into a VOCdevkit
    ids = write_folder(root, "Annotations+JPEGImages", count=4)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids[:3]) + "\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text(ids[3] + "\n")
    cfg = folder_cfg(root, **{"data.train_sets": [["2007", "trainval"]],
                              "data.test_sets": [["2007", "test"]]})
    assert build_dataset(cfg, train=True).image_ids == ids[:3]
    assert build_dataset(cfg, train=False).image_ids == ids[3:]


def test_xml_without_its_image_names_the_folder(tmp_path):
    root = tmp_path / "cells"
    write_folder(root, "annotations+images", count=4)
    for path in (root / "images").glob("img_00[0-3].png"):
        path.unlink()
    with pytest.raises(DataError, match=r"Image file not found: .*cells/images/img_00\d\.jpg "
                                        r"\(annotated in .*cells/annotations/img_00\d\.xml\)"):
        build_dataset(folder_cfg(root), train=True)


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), r"data.root .*empty_set is an empty folder; expected Annotations/"),
    (lambda root: (root / "Annotations").mkdir(parents=True),
     r"empty_set has the annotation folder Annotations/ but no image folder"),
    (lambda root: [(root / name).mkdir(parents=True) for name in ("Annotations", "JPEGImages")],
     r"No XML annotation files in .*empty_set/Annotations"),
])  # fmt: skip
def test_empty_folders_are_named(tmp_path, make, message):
    root = tmp_path / "empty_set"
    make(root)
    with pytest.raises(DataError, match=message):
        build_dataset(folder_cfg(root), train=True)


def test_truncated_jpeg_in_a_flat_folder_trains_with_one_warning(tmp_path, caplog):
    root = tmp_path / "photos"
    write_folder(root, "flat", count=3)
    (root / "img_001.png").unlink()
    write_truncated_jpeg(root / "img_001.jpg", 48, 40)
    train = build_dataset(folder_cfg(root, **{"data.val_fraction": 0.3}), train=True)
    index = train.image_ids.index("img_001")
    with caplog.at_level(logging.WARNING, logger="ssd"):
        for _ in range(3):
            assert train[index][0].shape == (40, 48, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "img_001.jpg" in warnings[0]


@pytest.mark.usefixtures("one_thread")
def test_training_writes_the_split_and_evaluating_its_checkpoint_uses_it(tmp_path):
    root, output = tmp_path / "cells", tmp_path / "run"
    write_folder(root, "Annotations+JPEGImages", count=10)
    overrides = {"data.format": "voc", "data.root": str(root), "data.class_names": CLASSES,
                 "model.num_classes": 3, "data.val_fraction": 0.3, "data.num_workers": 0,
                 "data.cache_images": False, "solver.batch_size": 2,
                 "solver.max_iter": 2, "solver.warmup_iters": 1, "train.checkpoint_period": 2,
                 "train.eval_period": 0, "train.amp": False}
    argv = ["--config", str(REPO_ROOT / "configs" / "shapes.yaml"), "--device", "cpu",
            "--output", str(output), "--no-progress",
            "--opts", *[f"{key}={json.dumps(value)}" for key, value in overrides.items()]]
    assert train_main()(argv) == 0
    train_ids = (output / "split" / "train.txt").read_text().split()
    test_ids = (output / "split" / "test.txt").read_text().split()
    assert len(test_ids) == 3 and len(train_ids) == 7 and set(train_ids).isdisjoint(test_ids)
    write_folder(root, "Annotations+JPEGImages", count=10, start=10)  # the folder grows later
    _, cfg = build_model_from_weights(output / "model_0000002.pth")
    assert Path(cfg.data.split_dir) == output / "split"
    assert build_dataset(cfg, train=False).image_ids == test_ids
    assert build_dataset(cfg, train=True).image_ids == train_ids


def test_a_folder_without_class_names_takes_them_from_its_xml_files(tmp_path, caplog):
    """data.class_names null on a folder of one's own: the sorted <object><name>s of its XML
    files (not the 20 VOC classes, and not the <name>s of object parts)."""
    root = tmp_path / "cells"
    write_folder(root, "flat", count=6)
    (root / "img_000.xml").write_text(xml(48, 40, obj("dog", (5, 6, 30, 28)).replace(
        "</object>", "<part><name>tail</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>"
                     "<ymax>4</ymax></bndbox></part></object>")))
    cfg = folder_cfg(root, **{"data.class_names": None})
    with caplog.at_level(logging.INFO, logger="ssd.data.build"):
        train = build_dataset(cfg, train=True)
    assert train.class_names == ["cat", "dog"]
    assert build_dataset(cfg, train=False).class_names == ["cat", "dog"]
    assert "class names from its XML files: ['cat', 'dog']" in caplog.text
