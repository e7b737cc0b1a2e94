"""convert_dataset / scripts/convert_dataset.py: VOC -> YOLO -> VOC and VOC -> COCO -> VOC round
trips on a small shapes set, the converted sets load with the project's readers, and bad
arguments or a failed write leave nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import load_script

from ssd.data import COCODataset, VOCDataset, YOLODataset, make_shapes
from ssd.data.convert import COCO_DECIMALS, YOLO_DECIMALS, convert_dataset

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
IMAGE_SIZE = 64
FLOAT32_EPS = float(np.finfo(np.float32).eps)  # Records keep pixel boxes in float32
# A YOLO corner is cx -+ w / 2 with cx and w each rounded to YOLO_DECIMALS decimals.
YOLO_CORNER_ERROR = 1.5 * 0.5 * 10.0 ** -YOLO_DECIMALS  # normalised
COCO_ERROR = 0.5 * 10.0 ** -COCO_DECIMALS  # pixels (x, y rounded; x + w adds w's rounding: x2)


def _script():
    return load_script("convert_dataset")


def run(*args: str) -> None:
    assert _script().main([*map(str, args), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """A shapes set (6 trainval + 3 test images of 64 px, some objects difficult)."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, num_train=6, num_test=3, image_size=IMAGE_SIZE, seed=0, workers=1)
    return root / "VOCshapes"


def voc_objects(folder: Path, split: str, with_difficult: bool = True) -> dict[str, list]:
    """image stem -> [(class name, (xmin, ymin, xmax, ymax) as written, difficult)] of a VOC folder."""
    names = ["circle", "cross", "hexagon", "square", "star", "triangle"]
    ds = VOCDataset(folder.parent, [(folder.name[3:], split)], class_names=names, keep_difficult=True,
                    verbose=False)
    objects = {}
    for index in range(len(ds)):
        ann = ds.get_annotation(index)
        objects[ann["image_id"].split("/")[-1]] = [
            (names[label], tuple(box.tolist()), bool(difficult))
            for box, label, difficult in zip(ann["boxes"], ann["labels"], ann["difficult"])
            if with_difficult or not difficult]
    return objects


def test_voc_to_yolo_to_voc_round_trip(voc, tmp_path):
    run("--from", "voc", "--to", "yolo", "--root", voc, "--out", tmp_path / "yolo")
    assert (tmp_path / "yolo" / "README.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolo"]  # no temporary folder left
    for split in ("trainval", "test"):
        original = voc_objects(voc, split, with_difficult=False)  # YOLO keeps no difficult objects
        ds = YOLODataset(tmp_path / "yolo", split, verbose=False)
        assert ds.class_names == sorted(ds.class_names)  # discovered names, sorted
        assert [image_id.split("/")[1] for image_id in ds.image_ids] == sorted(original)
        bound = YOLO_CORNER_ERROR * IMAGE_SIZE + FLOAT32_EPS * IMAGE_SIZE  # pixels
        for index, image_id in enumerate(ds.image_ids):
            ann = ds.get_annotation(index)
            expected = original[image_id.split("/")[1]]
            assert [ds.class_names[label] for label in ann["labels"]] == [o[0] for o in expected]
            # VOC XML is 1-based: xml - 1 is YOLO's 0-based pixel frame
            np.testing.assert_allclose(ann["boxes"], np.array([o[1] for o in expected]).reshape(-1, 4) - 1,
                                       rtol=0, atol=bound)

    # data.yaml also names the splits with the Ultralytics keys, which the config's defaults
    # (data.yolo.train_split: train, test_split: val) fall back to
    import yaml

    from ssd.config import load_config_from_dict
    from ssd.data.build import _yolo

    described = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert (described["train"], described["val"]) == ("images/trainval", "images/test")
    cfg = load_config_from_dict({"data": {"format": "yolo", "root": str(tmp_path / "yolo")},
                                 "model": {"num_classes": len(ds.class_names) + 1}})
    assert _yolo(cfg, train=True).split == "trainval" and _yolo(cfg, train=False).split == "test"

    run("--from", "yolo", "--to", "voc", "--root", tmp_path / "yolo", "--out", tmp_path / "back")
    for split in ("trainval", "test"):  # errors < 0.5 px: integer coordinates come back exactly
        assert voc_objects(tmp_path / "back" / "VOCconverted", split) == \
            voc_objects(voc, split, with_difficult=False)


def test_voc_to_coco_to_voc_round_trip(voc, tmp_path):
    run("--from", "voc", "--to", "coco", "--root", voc, "--out", tmp_path / "coco")
    assert any(o[2] for objects in voc_objects(voc, "trainval").values() for o in objects)
    for split in ("trainval", "test"):
        original = voc_objects(voc, split)
        ds = COCODataset(tmp_path / "coco" / "annotations" / f"instances_{split}.json",
                         tmp_path / "coco" / split, verbose=False)
        assert len(ds) == len(original)
        for index in range(len(ds)):
            ann = ds.get_annotation(index)
            stem = Path(ds.coco.imgs[ds.coco_image_ids[index]]["file_name"]).stem
            expected = original[stem]
            assert [ds.class_names[label] for label in ann["labels"]] == [o[0] for o in expected]
            np.testing.assert_array_equal(ann["difficult"], [o[2] for o in expected])  # iscrowd
            np.testing.assert_allclose(ann["boxes"], np.array([o[1] for o in expected]).reshape(-1, 4) - 1,
                                       rtol=0, atol=2 * COCO_ERROR + FLOAT32_EPS * IMAGE_SIZE)

    run("--from", "coco", "--to", "voc", "--root", tmp_path / "coco", "--out", tmp_path / "back")
    for split in ("trainval", "test"):  # difficult flags and integer boxes come back exactly
        assert voc_objects(tmp_path / "back" / "VOCconverted", split) == voc_objects(voc, split)


def test_images_are_copied_and_equal_stems_of_two_splits_stay_apart(tmp_path):
    root = tmp_path / "yolo"
    for split, value in (("train", 50), ("val", 200)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / "a.png"), np.full((20, 30, 3), value, np.uint8))
        (root / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    convert_dataset(root, tmp_path / "voc", "yolo", "voc", class_names=["thing"], progress=False)
    folder = tmp_path / "voc" / "VOCconverted"
    assert (folder / "ImageSets/Main/train.txt").read_text() == "a\n"
    assert (folder / "ImageSets/Main/val.txt").read_text() == "a-2\n"
    assert cv2.imread(str(folder / "JPEGImages/a-2.png"))[0, 0, 0] == 200
    assert (root / "images/train/a.png").is_file()  # copied, not moved


def _cli_error(capsys, *args: str) -> str:
    from ssd.cli.common import run_cli

    with pytest.raises(SystemExit) as info:
        run_cli(lambda: _script().main([*map(str, args), "--no-progress"]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_arguments_are_errors_with_exit_status_2(voc, tmp_path, capsys):
    assert "invalid choice: 'pascal'" in _cli_error(capsys, "--from", "pascal", "--to", "yolo", "--root",
                                                     voc, "--out", tmp_path / "x")
    assert "error: Input folder not found: " in _cli_error(capsys, "--from", "voc", "--to", "yolo", "--root",
                                                           tmp_path / "nowhere", "--out", tmp_path / "x")
    err = _cli_error(capsys, "--from", "coco", "--to", "yolo", "--root", voc, "--out", tmp_path / "x")
    assert "error: No COCO annotation files: expected " in err
    assert "error: --class-names needs distinct" in _cli_error(
        capsys, "--from", "voc", "--to", "yolo", "--root", voc, "--out", tmp_path / "x",
        "--class-names", "a,a")
    err = _cli_error(capsys, "--from", "voc", "--to", "yolo", "--root", voc, "--out", tmp_path / "x",
                     "--class-names", "circle,square")
    assert "error: Annotation " in err and "unknown class" in err
    assert not (tmp_path / "x").exists()

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    err = _cli_error(capsys, "--from", "voc", "--to", "yolo", "--root", voc, "--out", tmp_path / "full")
    assert "error: Output folder " in err and "--overwrite" in err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    run("--from", "voc", "--to", "yolo", "--root", voc, "--out", tmp_path / "full", "--overwrite")
    assert not (tmp_path / "full" / "keep.txt").exists() and (tmp_path / "full" / "data.yaml").is_file()


def test_a_failed_write_leaves_the_previous_output(voc, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    copies, copy = [], shutil.copyfile

    def failing_copy(source, target):
        copies.append(source)
        if len(copies) == 3:
            raise OSError("disk full")
        return copy(source, target)

    monkeypatch.setattr("ssd.data.convert.shutil.copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        convert_dataset(voc, out, "voc", "coco", overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # temporary folder removed
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_vocdevkit_splits_by_year_and_coco_images_under_images(voc, tmp_path, capsys):
    devkit = tmp_path / "devkit"
    for year in ("2007", "2012"):
        shutil.copytree(voc, devkit / f"VOC{year}")
    (devkit / "VOC2007" / "ImageSets" / "Main" / "circle_test.txt").write_text("000006 1\n")  # per class
    collection = convert_dataset(devkit, tmp_path / "coco", "voc", "coco", progress=False)
    assert sorted(collection.splits) == ["test2007", "test2012", "trainval2007", "trainval2012"]
    # COCO images may also live in images/<split>/
    coco = tmp_path / "coco"
    (coco / "images").mkdir()
    for split in collection.splits:
        (coco / split).rename(coco / "images" / split)
    convert_dataset(coco, tmp_path / "yolo", "coco", "yolo", progress=False)
    ds = YOLODataset(tmp_path / "yolo", "test2012", verbose=False)
    assert len(ds) == 3 and ds.class_names == collection.class_names

    plain = tmp_path / "plain"
    shutil.copytree(voc, plain)
    err = _cli_error(capsys, "--from", "voc", "--to", "yolo", "--root", plain, "--out", tmp_path / "x")
    assert "error: " in err and "expect a folder named VOC<name>" in err
