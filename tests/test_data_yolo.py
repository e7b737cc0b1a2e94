"""YOLODataset: a tiny set written here (images of known size + label files), image sizes
from headers, and each bad input's message."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd.data.common import DataError
from ssd.data.yolo import YOLODataset, read_image_size, read_yolo_names
from ssd.fileio import decode_image_file

NAMES = ["cat", "dog", "bird"]
# stem -> (width, height, extension, label file text or None for no file)
IMAGES = {
    "a": (100, 50, ".jpg", "1 0.5 0.5 0.2 0.4\n0 0.25 0.3 0.1 0.2\n"),
    "b": (40, 80, ".png", "\n2 0.5 0.5 1.0 1.0\n"),  # blank line ignored; whole image
    "c": (64, 32, ".bmp", None),  # no label file: no objects
    "d": (20, 20, ".jpg", ""),  # empty label file: no objects
}


def write_set(root: Path, images=IMAGES, names=NAMES, split="train", names_text=None) -> Path:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for value, (stem, (width, height, ext, labels)) in enumerate(images.items()):
        cv2.imwrite(str(root / "images" / split / f"{stem}{ext}"),
                    np.full((height, width, 3), 10 * value, np.uint8))
        if labels is not None:
            (root / "labels" / split / f"{stem}.txt").write_text(labels)
    if names is not None or names_text is not None:
        (root / "data.yaml").write_text(names_text or f"names: {names}\n")
    return root


def test_boxes_labels_and_annotations(tmp_path):
    ds = YOLODataset(write_set(tmp_path), "train", verbose=False)
    assert ds.class_names == NAMES
    assert ds.image_ids == ["train/a", "train/b", "train/c", "train/d"]
    assert ds.coordinate_origin == 0.0

    image, target = ds[0]
    assert image.shape == (50, 100, 3)
    # cx cy w h -> corners: (0.5 +- 0.1, 0.5 +- 0.2) and (0.25 +- 0.05, 0.3 +- 0.1)
    np.testing.assert_allclose(target, [[0.4, 0.3, 0.6, 0.7, 1], [0.2, 0.2, 0.3, 0.4, 0]],
                               atol=1e-6)
    ann = ds.get_annotation(0)
    assert (ann["width"], ann["height"]) == (100, 50)
    np.testing.assert_allclose(ann["boxes"], [[40, 15, 60, 35], [20, 10, 30, 20]], atol=1e-4)
    np.testing.assert_array_equal(ann["labels"], [1, 0])
    np.testing.assert_array_equal(ann["difficult"], [False, False])

    np.testing.assert_allclose(ds.get_annotation(1)["boxes"], [[0, 0, 40, 80]], atol=1e-4)
    np.testing.assert_allclose(ds[1][1], [[0, 0, 1, 1, 2]], atol=1e-6)
    assert ds[2][0].shape == (32, 64, 3) and ds[2][1].shape == (0, 5)
    assert ds[3][1].shape == (0, 5)
    assert ds.report.images == 4 and ds.report.objects == 3


def test_empty_images_left_out_when_not_kept(tmp_path):
    ds = YOLODataset(write_set(tmp_path), "train", keep_empty=False, verbose=False)
    assert ds.image_ids == ["train/a", "train/b"] and ds.report.empty_removed == 2


@pytest.mark.parametrize("names_text", ["names: [cat, dog, bird]\n",
                                        "names: {0: cat, 1: dog, 2: bird}\nnc: 3\n",
                                        "path: .\ntrain: images/train\nnames:\n  - cat\n  - dog\n  - bird\n"])
def test_names_file_forms(tmp_path, names_text):
    (tmp_path / "data.yaml").write_text(names_text)
    assert read_yolo_names(tmp_path / "data.yaml") == NAMES


@pytest.mark.parametrize("names_text, message", [
    ("names: {0: cat, 2: dog}\n", r"keys of 'names' must be 0..1"),
    ("names: [cat, dog]\nnc: 3\n", r"nc is 3 but 'names' lists 2"),
    ("train: images/train\n", r"has no class names"),
    ("names: [cat\n", r"not valid YAML"),
])
def test_bad_names_file(tmp_path, names_text, message):
    (tmp_path / "data.yaml").write_text(names_text)
    with pytest.raises(DataError, match=message) as info:
        read_yolo_names(tmp_path / "data.yaml")
    assert str(tmp_path / "data.yaml") in str(info.value)


def test_class_names_from_argument_or_file_must_agree(tmp_path):
    write_set(tmp_path, names=None)
    with pytest.raises(FileNotFoundError, match=r"data.yaml.*data.class_names"):
        YOLODataset(tmp_path, "train", verbose=False)
    assert YOLODataset(tmp_path, "train", class_names=NAMES, verbose=False).class_names == NAMES
    (tmp_path / "data.yaml").write_text("names: [cat, dog, bird]\n")
    with pytest.raises(ValueError, match=r"do not agree with .*data.yaml"):
        YOLODataset(tmp_path, "train", class_names=["dog", "cat", "bird"], verbose=False)


@pytest.mark.parametrize("labels, message", [
    ("0 0.5 0.5 0.2\n", r"a.txt line 1: expected 5 numbers 'class cx cy w h', got 4 fields"),
    ("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2 0.9\n", r"a.txt line 2: expected 5 numbers"),
    ("0 0.5 half 0.2 0.2\n", r"a.txt line 1: expected numbers 'class cx cy w h', got '0 0.5 half"),
    ("3 0.5 0.5 0.2 0.2\n", r"a.txt line 1: class 3 is out of range: expected an integer in 0-2"),
    ("-1 0.5 0.5 0.2 0.2\n", r"a.txt line 1: class -1 is out of range"),
    ("1.5 0.5 0.5 0.2 0.2\n", r"a.txt line 1: class 1.5 is out of range"),
    ("0 50 25 20 10\n", r"a.txt: box 1 .* outside the image; YOLO values are normalised to \[0, 1\]"),
])
def test_bad_label_lines_name_file_and_line(tmp_path, labels, message):
    write_set(tmp_path, images={"a": (100, 50, ".jpg", labels)})
    with pytest.raises(DataError, match=message):
        YOLODataset(tmp_path, "train", verbose=False)


def test_slightly_outside_is_clipped_and_degenerate_dropped(tmp_path):
    # corner at -0.005 (within the rounding tolerance) clipped; zero-width box dropped
    labels = "0 0.095 0.5 0.2 0.2\n1 0.5 0.5 0.0 0.2\n"
    write_set(tmp_path, images={"a": (100, 50, ".jpg", labels)})
    ds = YOLODataset(tmp_path, "train", verbose=False)
    np.testing.assert_allclose(ds.get_annotation(0)["boxes"], [[0, 20, 19.5, 30]], atol=1e-4)
    assert ds.report.clipped == 1 and ds.report.degenerate == 1
    assert "1 boxes clipped" in ds.report.summary()


def test_label_without_image_and_skip_bad(tmp_path):
    write_set(tmp_path)
    (tmp_path / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "train" / "d.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"ghost.txt has no image: expected .*images/train/ghost.jpg"):
        YOLODataset(tmp_path, "train", verbose=False)
    ds = YOLODataset(tmp_path, "train", skip_bad=True, verbose=False)
    assert ds.image_ids == ["train/a", "train/b", "train/c"]  # d skipped for its bad class
    assert dict(ds.report.skipped) == {"missing image": 1, "unknown class": 1}
    assert "skipped 2" in ds.report.summary()


def test_missing_split_folder_names_it(tmp_path):
    write_set(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"images/val"):
        YOLODataset(tmp_path, "val", verbose=False)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """`jpeg` with an APP1 EXIF block (big-endian TIFF, one IFD entry: Orientation)."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, SHORT, count 1, value
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    segment = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", "rotated.jpg", "progressive.jpg"])
def test_image_size_from_header_matches_the_decoder(tmp_path, ext, monkeypatch):
    image = np.zeros((30, 50, 3), np.uint8)
    path = tmp_path / f"image{ext}"
    if ext == "rotated.jpg":  # EXIF orientation 6: the decoder turns it by 90 degrees
        path.write_bytes(_with_exif_orientation(cv2.imencode(".jpg", image)[1].tobytes(), 6))
    elif ext == "progressive.jpg":
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    else:
        cv2.imwrite(str(path), image)
    height, width = decode_image_file(path).shape[:2]
    if ext.endswith((".jpg", ".png")):  # read from the header: no decoding
        monkeypatch.setattr("ssd.data.yolo.read_image", lambda path: pytest.fail("decoded"))
    assert read_image_size(path) == (width, height)
    assert (width, height) == ((30, 50) if ext == "rotated.jpg" else (50, 30))


def test_image_size_of_a_broken_file_is_a_data_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff")  # a JPEG start without a frame
    with pytest.raises(DataError, match="broken.jpg"):
        read_image_size(path)


# --- build_dataset and training --------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def random_set(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> None:
    """`count` noisy images of `size` px with 1-3 boxes of classes 0/1 (normalised cx cy w h)."""
    images = {}
    for k in range(count):
        sizes = rng.uniform(0.2, 0.5, size=(rng.integers(1, 4), 2))
        centres = rng.uniform(sizes / 2, 1 - sizes / 2)
        lines = [f"{rng.integers(0, 2)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
                 for (cx, cy), (w, h) in zip(centres, sizes)]
        images[f"{split}{k:02d}"] = (size, size, ".jpg", "\n".join(lines) + "\n")
    write_set(root, images=images, names=["ring", "blob"], split=split)


def yolo_config(root: Path, *extra: str):
    from ssd.config import load_config

    return load_config(REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml", overrides=[
        "data.format=yolo", f"data.root={root}", "data.class_names=null", "model.num_classes=3",
        "data.yolo.train_split=fit", "data.yolo.test_split=check", *extra])


def test_config_keys_are_checked():
    from ssd.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.yolo.names'.*did you mean 'data.yolo.names_file'"):
        yolo_config(Path("."), "data.yolo.names=x.yaml")
    with pytest.raises(ConfigError, match=r"'data.yolo.train_split' .* expects str"):
        yolo_config(Path("."), "data.yolo.train_split=3")


def test_build_dataset_and_train_a_few_iterations(tmp_path, one_thread):
    from ssd.data import YOLODataset, build_dataset
    from ssd.engine.trainer import Trainer

    rng = np.random.default_rng(0)
    random_set(tmp_path, "fit", 8, 96, rng)
    random_set(tmp_path, "check", 2, 96, rng)
    cfg = yolo_config(tmp_path, "data.num_workers=0", "solver.batch_size=4",
                      "solver.max_iter=3", "solver.warmup_iters=1", "train.log_period=1",
                      "train.checkpoint_period=3", "train.eval_period=3", "test.batch_size=2")
    train_set = build_dataset(cfg, train=True)
    assert isinstance(train_set, YOLODataset) and train_set.class_names == ["ring", "blob"]
    assert len(train_set) == 8 and len(build_dataset(cfg, train=False)) == 2
    with pytest.raises(ValueError, match="num_classes"):
        build_dataset(yolo_config(tmp_path, "model.num_classes=4"), train=True)

    trainer = Trainer.from_config(cfg, output_dir=tmp_path / "run", device="cpu", progress=False)
    last = trainer.train()
    assert trainer.iteration == 3 and np.isfinite(last["loss"])
    assert 0.0 <= last["eval"]["mAP"] <= 1.0 and set(last["eval"]["ap"]) == {"ring", "blob"}


def test_predictor_does_not_call_a_20_class_yolo_model_by_voc_names():
    from ssd.config import load_config
    from ssd.predictor import class_names_for

    cfg = load_config(overrides=["data.format=yolo", "model.num_classes=21"])
    assert class_names_for(cfg) == [f"class_{label}" for label in range(20)]


def test_split_folders_named_by_data_yaml(tmp_path):
    """A set whose folders are not the configured train / val ones is read through data.yaml's
    Ultralytics keys (train: images/<split>, val: images/<split>); a key leading out of images/
    is not followed."""
    from ssd.data import build_dataset

    rng = np.random.default_rng(0)
    random_set(tmp_path, "training", 3, 64, rng)
    random_set(tmp_path, "validation", 2, 64, rng)
    (tmp_path / "data.yaml").write_text("train: images/training\nval: images/validation\n"
                                        "names: [ring, blob]\n")
    cfg = yolo_config(tmp_path, "data.yolo.train_split=train", "data.yolo.test_split=val")
    train, test = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    assert [len(train), len(test)] == [3, 2] and train.class_names == ["ring", "blob"]
    assert test.image_ids[0].startswith("validation/")
    (tmp_path / "data.yaml").write_text("train: images/..\nval: images/validation\n"
                                        "names: [ring, blob]\n")
    with pytest.raises(FileNotFoundError, match="images/train"):
        build_dataset(cfg, train=True)
