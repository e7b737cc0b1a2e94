"""Names from data never steer file paths: class names (from a checkpoint or a YOLO data.yaml),
image file names in annotation files and image ids in split lists can neither write nor read a
file outside the folder they belong to (ssd.fileio.safe_file_name, safe_file_names,
path_inside), while ordinary names stay as they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script

from ssd.cli import eval as eval_script
from ssd.cli.common import run_cli
from ssd.cli.predict import main as predict_main
from ssd.config import load_config
from ssd.data import COCODataset, DataError, VOCDataset
from ssd.evaluation import load_voc_results, write_voc_results
from ssd.fileio import MAX_NAME_BYTES, path_inside, safe_file_name, safe_file_names
from ssd.modeling import build_model

SMALL_CONFIG = Path(__file__).resolve().parent / "configs" / "ssd7_160.yaml"  # SSD7, 160 px
ORDINARY = ["person", "traffic light", "t-shirt", "v1.2", "class_3", "café", "東京", "हिन्दी"]
TRAVERSAL = "x/../../../../victim"
HOSTILE = [TRAVERSAL, "../../etc/passwd", "/tmp/abs"]
CLASSES = [*HOSTILE, "cat"]  # the eval and predict tests' classes: three hostile, one ordinary
IMAGE_SIZE = (48, 40)  # width, height of the tiny data sets' images

pytestmark = pytest.mark.usefixtures("one_thread")


def all_paths(folder: Path) -> set[Path]:
    """Every file and folder below `folder`."""
    return set(folder.rglob("*"))


def deep_output_folder(tmp_path: Path) -> Path:
    """tmp_path/a/b/c/d/out, its parents made: a name with four ".." steps out of it would
    land in tmp_path/a/b, where the before/after listing sees it."""
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    out.parent.mkdir(parents=True)
    return out


def assert_new_paths_inside(before: set[Path], after: set[Path], inside: Path) -> None:
    """Every path in `after` but not in `before` lies in `inside` (and is not a link)."""
    outside = sorted(str(p) for p in after - before if inside not in p.parents and p != inside)
    assert not outside, f"written outside {inside}: {outside}"
    assert not [p for p in after - before if p.is_symlink()]


# ------------------------------------------------------------------------- safe_file_name
def test_ordinary_names_are_kept_as_they_are():
    assert [safe_file_name(name) for name in ORDINARY] == ORDINARY
    assert safe_file_names(ORDINARY, "class name") == ORDINARY
    longest = "a" * MAX_NAME_BYTES
    assert safe_file_name(longest) == longest


@pytest.mark.parametrize("name", [*HOSTILE, "..", ".", ".hidden", "a\0b", "tab\there", "a\\b",
                                  "..\\..\\windows", "new\nline"])
def test_unsafe_names_become_one_visible_component(name):
    safe = safe_file_name(name, "class name")
    assert os.sep not in safe and "/" not in safe and "\\" not in safe and "\0" not in safe
    assert not safe.startswith(".") and safe not in (".", "..")
    assert all(char.isprintable() for char in safe)
    assert safe != name and safe == safe_file_name(name)  # rewritten, the same every time
    assert safe not in ORDINARY


def test_rewritten_names_do_not_meet_ordinary_or_each_other():
    assert safe_file_name("a/b") != safe_file_name("a_b") == "a_b"
    assert safe_file_name("a/b") != safe_file_name("a\\b") != safe_file_name("a:b")
    assert safe_file_name(TRAVERSAL).startswith("x_.._.._.._.._victim-")


def test_overlong_names_are_cut_and_stay_distinct():
    first, second = "é" * 300 + "1", "é" * 300 + "2"
    safe = [safe_file_name(first), safe_file_name(second)]
    assert safe[0] != safe[1]
    assert all(len(name.encode("utf-8")) <= MAX_NAME_BYTES for name in safe)
    assert all(name.startswith("éé") for name in safe)


@pytest.mark.parametrize("name", ["", None, 3])
def test_empty_or_non_string_names_are_refused_naming_what_they_are(name):
    with pytest.raises(ValueError, match="class name .* cannot name a file"):
        safe_file_name(name, "class name")


def test_names_that_differ_only_in_case_get_two_files():
    names = safe_file_names(["Car", "car", "a/b", "a_b"], "class name")
    assert names[0] == "Car" and names[1].startswith("car-") and names[3] == "a_b"
    assert len({name.casefold() for name in names}) == 4
    assert safe_file_names(["car", "car"]) == ["car", "car"]  # one name, one file


def test_a_remaining_collision_is_refused_naming_both():
    # Two names of seven unsafe characters whose SHA-256 digests share their first 8 hex digits
    # (443323f2): both would become "_______-443323f2".
    first, second = "/:|*?/\\", "/?:>??>"
    assert safe_file_name(first) == safe_file_name(second)
    with pytest.raises(ValueError, match="class names .* would be written to the same file"):
        safe_file_names([first, second], "class name")


# ---------------------------------------------------------------------------- path_inside
def test_path_inside_keeps_sub_folders_and_refuses_the_way_out(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (images / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (images / "inner.jpg").symlink_to(images / "sub")
    assert path_inside(images, "sub/a.jpg", "x") == images / "sub" / "a.jpg"
    assert path_inside(images, "sub/../a.jpg", "x") == images / "sub/../a.jpg"
    assert path_inside(images, "inner.jpg", "x") == images / "inner.jpg"  # a link that stays in
    for value in ["../secret.jpg", "sub/../../secret.jpg", "link.jpg", "..", str(tmp_path / "secret.jpg"),
                  "/etc/passwd", "", "a\0b"]:
        with pytest.raises(ValueError, match="file_name of image 7") as refused:
            path_inside(images, value, "file_name of image 7")
        assert repr(value) in str(refused.value) and str(images) in str(refused.value)


# ---------------------------------------------------------------- evaluation result files
def test_voc_results_files_stay_in_their_folder_and_read_back(tmp_path):
    out = deep_output_folder(tmp_path)
    before = all_paths(tmp_path)
    dets = {"img1": {"boxes": np.array([[0.0, 0, 9, 9], [1, 1, 5, 5]]),
                     "scores": np.array([0.9, 0.8]), "labels": np.array([0, 3])}}
    paths = write_voc_results(dets, None, CLASSES, out)
    assert_new_paths_inside(before, all_paths(tmp_path), out)
    assert [p.parent for p in paths] == [out] * len(CLASSES)
    assert paths[-1].name == "comp4_det_test_cat.txt"  # an ordinary name as before
    back = load_voc_results(out, CLASSES)
    np.testing.assert_array_equal(back["img1"]["labels"], [0, 3])


def write_yolo_set(root: Path, names: list[str] | None) -> Path:
    """root/images/val/ (two images), root/labels/val/ (one object of each of two classes), and
    root/data.yaml when `names` is given."""
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for index, stem in enumerate(["a", "b"]):
        image = np.full((IMAGE_SIZE[1], IMAGE_SIZE[0], 3), 60, np.uint8)
        cv2.rectangle(image, (8, 8), (30, 30), (200, 40 * index, 90), -1)
        cv2.imwrite(str(root / "images" / "val" / f"{stem}.png"), image)
        (root / "labels" / "val" / f"{stem}.txt").write_text(f"{index * 3} 0.4 0.5 0.45 0.55\n")
    if names is not None:
        (root / "data.yaml").write_text(json.dumps({"names": names}))
    return root


def yolo_checkpoint(path: Path, data_root: Path, class_names: list[str] | None) -> Path:
    """An untrained SSD7 checkpoint for four classes whose config reads the YOLO set at
    `data_root` (its val split) with data.class_names `class_names`."""
    cfg = load_config(SMALL_CONFIG, overrides=[
        f"model.num_classes={len(CLASSES) + 1}", f"data.class_names={json.dumps(class_names)}",
        "data.format=yolo", f"data.root={data_root}", "data.yolo.test_split=val",
        "data.num_workers=0", "test.metric=voc07"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    return path


@pytest.mark.parametrize("names_from", ["checkpoint", "data.yaml"])
def test_eval_writes_every_file_inside_its_output_folder(tmp_path, names_from):
    data_root = write_yolo_set(tmp_path / "data", CLASSES if names_from == "data.yaml" else None)
    weights = yolo_checkpoint(tmp_path / "weights.pth", data_root,
                              CLASSES if names_from == "checkpoint" else None)
    out = deep_output_folder(tmp_path)
    before = all_paths(tmp_path)
    code = eval_script.main(["--weights", str(weights), "--device", "cpu", "--output", str(out),
                             "--no-progress"])
    assert code in (0, eval_script.EXIT_NO_MAP)
    assert_new_paths_inside(before, all_paths(tmp_path), out)
    written = sorted(p.name for p in out.glob("comp4_det_test_*.txt"))
    assert len(written) == len(CLASSES) and "comp4_det_test_cat.txt" in written
    assert (out / "results.json").is_file() and (out / "pr_curves.png").is_file()
    assert list(json.loads((out / "results.json").read_text())["ap"]) == CLASSES  # names as given


def test_eval_refuses_an_empty_class_name_before_inference(tmp_path, capsys):
    data_root = write_yolo_set(tmp_path / "data", None)
    weights = yolo_checkpoint(tmp_path / "weights.pth", data_root, ["", "b", "c", "d"])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: eval_script.main(["--weights", str(weights), "--device", "cpu",
                                          "--output", str(out), "--no-progress"]))
    assert stopped.value.code == 2
    assert "error: class name '' cannot name a file" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------- prediction, video
def test_predict_images_and_videos_write_only_into_the_output_folder(tmp_path):
    """Class names reach only the pictures and JSON; output names come from the inputs."""
    data_root = write_yolo_set(tmp_path / "data", None)
    weights = yolo_checkpoint(tmp_path / "weights.pth", data_root, CLASSES)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, IMAGE_SIZE)
    for _ in range(3):
        writer.write(cv2.imread(str(data_root / "images" / "val" / "a.png")))
    writer.release()
    out = tmp_path / "out"
    before = all_paths(tmp_path)
    code = predict_main([str(data_root / "images" / "val" / "a.png"), str(video), "--weights",
                         str(weights), "--out", str(out), "--json", "--score-threshold", "0.01",
                         "--device", "cpu", "--precision", "fp32", "--no-progress"])
    assert code == 0
    assert_new_paths_inside(before, all_paths(tmp_path), out)
    assert sorted(p.name for p in out.iterdir()) == [
        "a_det.jpg", "clip_det.jsonl", "clip_det.mp4", "detections.json"]
    found = json.loads((out / "detections.json").read_text())["images"]
    names = {det["class_name"] for entry in found.values() for det in entry["detections"]}
    assert names and names <= set(CLASSES)  # the names themselves are reported unchanged


# ------------------------------------------------------------------------- data readers
def write_coco_set(root: Path, file_name: str) -> Path:
    """root/annotations/instances_train.json with one image named `file_name`, root/train/
    holding an ordinary image, and root/secret.jpg: an image outside the image folder."""
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    image = np.full((IMAGE_SIZE[1], IMAGE_SIZE[0], 3), 90, np.uint8)
    cv2.imwrite(str(root / "train" / "ok.jpg"), image)
    cv2.imwrite(str(root / "secret.jpg"), image)
    (root / "train" / "link.jpg").symlink_to(root / "secret.jpg")
    size = {"width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]}
    data = {"images": [{"id": 1, "file_name": "ok.jpg", **size},
                       {"id": 2, "file_name": file_name, **size}],
            "annotations": [{"id": 1, "image_id": image_id, "category_id": 1,
                             "bbox": [2, 2, 10, 10], "iscrowd": 0} for image_id in (1, 2)],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return root


ESCAPING_FILE_NAMES = ["../../../../../../../../etc/passwd", "../secret.jpg", "link.jpg",
                       "ABSOLUTE"]


def _file_name(value: str, root: Path) -> str:
    return str(root / "secret.jpg") if value == "ABSOLUTE" else value


@pytest.mark.parametrize("file_name", ESCAPING_FILE_NAMES)
def test_coco_reader_refuses_an_image_outside_its_folder(tmp_path, file_name):
    root = tmp_path / "coco"
    value = _file_name(file_name, root)
    write_coco_set(root, value)
    annotations = root / "annotations" / "instances_train.json"
    with pytest.raises(DataError, match="leads out of|not a relative path") as refused:
        COCODataset(annotations, root / "train", verbose=False)
    assert str(annotations) in str(refused.value) and repr(value) in str(refused.value)
    assert refused.value.reason == "bad annotation"
    kept = COCODataset(annotations, root / "train", skip_bad=True, verbose=False)
    assert [r.image_path for r in kept.records] == [root / "train" / "ok.jpg"]


def test_coco_reader_keeps_images_in_sub_folders(tmp_path):
    root = write_coco_set(tmp_path / "coco", "sub/deeper.jpg")
    (root / "train" / "sub").mkdir()
    cv2.imwrite(str(root / "train" / "sub" / "deeper.jpg"), np.zeros((8, 8, 3), np.uint8))
    dataset = COCODataset(root / "annotations" / "instances_train.json", root / "train",
                          verbose=False)
    assert dataset.records[1].image_path == root / "train" / "sub" / "deeper.jpg"


def test_voc_reader_refuses_an_image_id_outside_annotations(tmp_path):
    folder = tmp_path / "VOCx"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    (tmp_path / "outside.xml").write_text("<annotation><size><width>8</width><height>8</height>"
                                          "</size></annotation>")
    split = folder / "ImageSets" / "Main" / "test.txt"
    split.write_text("../../outside\n")
    with pytest.raises(DataError, match="image id '../../outside'") as refused:
        VOCDataset(tmp_path, [("x", "test")], class_names=["thing"], verbose=False)
    assert str(split) in str(refused.value) and "leads out of" in str(refused.value)


# ---------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("file_name", ESCAPING_FILE_NAMES)
@pytest.mark.parametrize("target", ["yolo", "voc"])
def test_conversion_refuses_a_coco_file_name_outside_the_image_folder(tmp_path, capsys,
                                                                      file_name, target):
    root = tmp_path / "coco"
    value = _file_name(file_name, root)
    write_coco_set(root, value)
    before = all_paths(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: load_script("convert_dataset").main([
            "--from", "coco", "--to", target, "--root", str(root), "--out", str(tmp_path / "out"),
            "--no-progress"]))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "instances_train.json" in err and repr(value) in err
    assert "Traceback" not in err
    assert all_paths(tmp_path) == before  # nothing copied, no output, no temporary folder


def test_conversion_names_outputs_safely_and_keeps_ordinary_names(tmp_path):
    from ssd.data.convert import convert_dataset

    root = tmp_path / "yolo"
    for split in ("train", ".hidden"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in ("0001", ".dot", "Same", "same"):
            cv2.imwrite(str(root / "images" / split / f"{stem}.png"), np.zeros((8, 8, 3), np.uint8))
            (root / "labels" / split / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    out = tmp_path / "out"
    before = all_paths(tmp_path)
    convert_dataset(root, out, "yolo", "coco", class_names=["thing"], progress=False)
    assert_new_paths_inside(before, all_paths(tmp_path), out)
    assert not [p for p in out.rglob(".*")]  # no hidden file or folder
    images = [p.name for p in out.rglob("*.png")]
    assert "0001.png" in images and "Same.png" in images  # ordinary names unchanged
    assert len({name.casefold() for name in images}) == 8  # Same and same: two files everywhere
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert {"train", "annotations"} < folders and len(folders) == 3  # + the rewritten .hidden
