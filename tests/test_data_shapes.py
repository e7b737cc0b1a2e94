"""The synthetic shapes data set: files read back exactly, layout rules, determinism."""

from __future__ import annotations

import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CONFIGS

from ssd.config import load_config
from ssd.data import SHAPES_CLASSES, VOCDataset, make_shapes
from ssd.data.shapes import (
    DIFFICULT_SIZE,
    JPEG_QUALITY,
    MAX_COVER,
    MAX_IOU,
    MAX_SIZE,
    MIN_SIZE,
    image_generator,
    render_image,
    sample_objects,
)

SIZE = 96


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    names = make_shapes(root, num_train=12, num_test=4, image_size=SIZE, seed=5)
    assert names == list(SHAPES_CLASSES)
    return root


def test_class_names_match_the_demo_config():
    assert SHAPES_CLASSES == ("circle", "square", "triangle", "star", "hexagon", "cross")
    assert load_config(CONFIGS / "shapes.yaml").data.class_names == list(SHAPES_CLASSES)


def test_voc_layout(shapes_root):
    base = shapes_root / "VOCshapes"
    assert (base / "ImageSets/Main/trainval.txt").read_text().split() == [
        f"{k:06d}" for k in range(12)]
    assert (base / "ImageSets/Main/test.txt").read_text().split() == [
        f"{k:06d}" for k in range(12, 16)]
    assert len(list((base / "JPEGImages").glob("*.jpg"))) == 16
    root = ET.parse(base / "Annotations/000003.xml").getroot()
    assert root.findtext("filename") == "000003.jpg"
    assert [root.findtext(f"size/{f}") for f in ("width", "height", "depth")] == [
        str(SIZE), str(SIZE), "3"]
    for node in root.iter("object"):
        assert node.findtext("name") in SHAPES_CLASSES
        assert node.findtext("pose") == "Unspecified" and node.findtext("truncated") == "0"
        assert node.findtext("difficult") in ("0", "1")
        assert all(node.find(f"bndbox/{f}") is not None for f in ("xmin", "ymin", "xmax", "ymax"))
    assert not list(shapes_root.glob(".VOCshapes-*"))  # the staging folder was renamed


@pytest.mark.parametrize("split, first_id", [("trainval", 0), ("test", 12)])
def test_read_back_exactly_the_generated_objects(shapes_root, split, first_id):
    ds = VOCDataset(shapes_root, [("shapes", split)], class_names=SHAPES_CLASSES,
                    keep_difficult=True, verbose=False)
    assert len(ds) == (12 if split == "trainval" else 4)
    for k in range(len(ds)):
        image, objects = render_image(image_generator(5, split, k), SIZE)
        ann = ds.get_annotation(k)
        assert ann["image_id"] == f"VOCshapes/{first_id + k:06d}"
        np.testing.assert_array_equal(ann["boxes"], [o.voc_box(SIZE) for o in objects])
        np.testing.assert_array_equal(ann["labels"], [o.label for o in objects])
        np.testing.assert_array_equal(ann["difficult"], [o.difficult(SIZE) for o in objects])
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
        np.testing.assert_array_equal(ds[k][0], cv2.imdecode(jpeg, cv2.IMREAD_COLOR))


def test_layout_rules_over_many_images():
    counts, sizes = [], []
    for k in range(300):
        objects = sample_objects(np.random.default_rng([1, k]), 200)
        counts.append(len(objects))
        boxes = np.array([o.box for o in objects])  # [n, 4] continuous pixels
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 200).all()
        side = (boxes[:, 2:] - boxes[:, :2]).max(axis=1)
        sizes += list(side / 200)
        np.testing.assert_array_equal([o.difficult(200) for o in objects],
                                      side < DIFFICULT_SIZE * 200)
        areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        assert list(areas) == sorted(areas, reverse=True)  # larger shapes drawn first
        for i, j in itertools.combinations(range(len(boxes)), 2):
            low = np.maximum(boxes[i, :2], boxes[j, :2])
            high = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = np.prod(np.clip(high - low, 0, None))
            assert inter / (areas[i] + areas[j] - inter) <= MAX_IOU + 1e-9
            assert inter / min(areas[i], areas[j]) <= MAX_COVER + 1e-9
    assert min(counts) >= 1 and max(counts) == 6
    assert min(sizes) >= MIN_SIZE - 1e-9 and max(sizes) <= MAX_SIZE + 1e-9
    assert max(sizes) > 0.6 and min(sizes) < 0.1  # really from small to most of the image
    labels = [o.label for k in range(100) for o in sample_objects(np.random.default_rng(k), 200)]
    assert set(labels) == set(range(len(SHAPES_CLASSES)))


def test_boxes_are_tight_around_the_drawn_pixels():
    for k in range(40):
        for obj in sample_objects(np.random.default_rng([2, k]), 120):
            mask = np.zeros((120, 120), np.uint8)
            points = np.rint((obj.polygon - 0.5) * 16).astype(np.int32)
            cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8, shift=4)
            ys, xs = np.nonzero(mask)
            drawn = np.array([xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1])  # 1-based
            assert np.abs(np.array(obj.voc_box(120)) - drawn).max() <= 1


def test_objects_stand_out_from_the_background():
    image, objects = render_image(np.random.default_rng(11), 200)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    inside = np.zeros(image.shape[:2], bool)
    for obj in objects:
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.rint((obj.polygon - 0.5) * 16).astype(np.int32)], 1, shift=4)
        inside |= cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
    assert hsv[..., 1][inside].mean() > 2 * hsv[..., 1][~inside].mean()  # saturated on muted


def test_deterministic_for_a_seed(tmp_path, shapes_root):
    make_shapes(tmp_path / "same", 12, 4, SIZE, seed=5)
    make_shapes(tmp_path / "other", 12, 4, SIZE, seed=6)
    for name in ("Annotations/000002.xml", "JPEGImages/000013.jpg"):
        reference = (shapes_root / "VOCshapes" / name).read_bytes()
        assert (tmp_path / "same/VOCshapes" / name).read_bytes() == reference
        assert (tmp_path / "other/VOCshapes" / name).read_bytes() != reference


def test_worker_processes_write_the_same_files(tmp_path, shapes_root):
    make_shapes(tmp_path, 12, 4, SIZE, seed=5, workers=3)
    reference = shapes_root / "VOCshapes"
    written = sorted(p.relative_to(tmp_path / "VOCshapes") for p in (tmp_path / "VOCshapes").rglob("*")
                     if p.is_file())
    assert written == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    for name in written:
        assert (tmp_path / "VOCshapes" / name).read_bytes() == (reference / name).read_bytes(), name


def test_regenerating_replaces_the_old_set(tmp_path):
    make_shapes(tmp_path, 6, 2, 64, seed=0)
    make_shapes(tmp_path, 3, 1, 64, seed=0)
    ds = VOCDataset(tmp_path, [("shapes", "trainval")], class_names=SHAPES_CLASSES, verbose=False)
    assert len(ds) == 3 and not (tmp_path / "VOCshapes/JPEGImages/000005.jpg").exists()


def test_a_folder_the_generator_did_not_write_is_never_replaced(tmp_path):
    from ssd.config import load_config
    from ssd.data import DataError, build_dataset

    hand_made = tmp_path / "VOCshapes"
    (hand_made / "Annotations").mkdir(parents=True)
    (hand_made / "Annotations" / "mine.xml").write_text("<annotation/>")
    cfg = load_config(CONFIGS / "shapes.yaml", overrides=[
        f"data.root={tmp_path}", "data.shapes.num_train=3", "data.shapes.num_test=1",
        "data.shapes.image_size=64"])
    with pytest.raises(DataError) as err:
        build_dataset(cfg, train=True)
    assert str(hand_made) in str(err.value) and "shapes.json" in str(err.value)
    assert "left untouched" in str(err.value)
    assert (hand_made / "Annotations" / "mine.xml").read_text() == "<annotation/>"
    # a generated set with a file added by hand is not the generator's alone either
    make_shapes(tmp_path / "generated", 3, 1, 64, seed=0)
    extra = tmp_path / "generated" / "VOCshapes" / "Annotations" / "extra.xml"
    extra.write_text("<annotation/>")
    foreign = r"files the shapes generator did not write \(Annotations/extra.xml\)"
    with pytest.raises(DataError, match=foreign):
        make_shapes(tmp_path / "generated", 4, 1, 64, seed=0)
    assert extra.exists() and len(list(extra.parent.glob("*.xml"))) == 5
    extra.unlink()
    make_shapes(tmp_path / "generated", 4, 1, 64, seed=0)  # the generator's own set is replaced
    assert len(list(extra.parent.glob("*.xml"))) == 5 and (extra.parent / "000004.xml").exists()


def test_make_shapes_script_writes_a_readable_set_and_rejects_bad_sizes(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_shapes.py"
    done = subprocess.run([sys.executable, str(script), "--root", str(tmp_path), "--num-train", "3",
                           "--num-test", "2", "--image-size", "64"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Wrote 3 + 2 images" in done.stdout
    ds = VOCDataset(tmp_path, [("shapes", "test")], class_names=SHAPES_CLASSES, keep_difficult=True,
                    verbose=False)
    assert len(ds) == 2
    bad = subprocess.run([sys.executable, str(script), "--root", str(tmp_path / "bad"), "--num-train", "-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error: make_shapes needs num_train, num_test >= 0" in bad.stderr and "Traceback" not in bad.stderr
