"""YOLO-format data sets (the Ultralytics / Darknet layout).

    root/images/{split}/{stem}.jpg      (any extension of IMAGE_EXTENSIONS)
    root/labels/{split}/{stem}.txt      one object per line: ``class cx cy w h``, normalised to
                                        [0, 1] by the image width / height; no file: no objects
    root/data.yaml                      ``names: [a, b]`` or ``names: {0: a, 1: b}``; or a
                                        classes.txt (any .txt / .names file): one name a line;
                                        ``train: images/<split>`` and ``val: images/<split>``
                                        name the split folders (`data_yaml_split`)

Boxes are kept in 0-based pixels (``normalised * size``, coordinate_origin 0), so the evaluator
and ``ds[i]`` see them as they see COCO's. The image size comes from the file header (read by
Pillow), so building the data set does not decode every image. YOLO has no difficult flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml
from PIL import Image

from ssd.data.common import (
    DataError,
    DetectionDataset,
    Record,
    check_distinct_class_names,
    list_images,
    read_image,
    sanitize_boxes,
)
from ssd.fileio import safe_file_name

LABEL_FIELDS = 5  # class cx cy w h
# A corner this far (as a fraction of the image side) outside [0, 1] is rounding or annotation
# jitter and is clipped; further out is an error (typically pixel coordinates in the file).
EDGE_TOLERANCE = 0.01

EXIF_ORIENTATION_TAG = 0x0112
EXIF_TRANSPOSED = {5, 6, 7, 8}  # orientations that rotate by 90 degrees: width and height swap


# ------------------------------------------------------------------------------ image size
def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as `read_image` decodes it.

    Read from the file header by Pillow's lazy ``Image.open`` (for JPEG with the EXIF
    orientation applied, as the decoder applies it); files Pillow cannot identify are decoded.

    Raises:
        DataError: the file is missing or cannot be decoded (as `read_image`).
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1) if image.format == "JPEG" else 1
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        width = height = 0  # read_image names the problem
    if min(width, height) > 0:
        return (height, width) if orientation in EXIF_TRANSPOSED else (width, height)
    height, width = read_image(path).shape[:2]
    return width, height


# ------------------------------------------------------------------------- names, labels
# Names files with one class name a line (Darknet's obj.names, the classes.txt of labelling
# tools); any other file is read as a data.yaml.
PLAIN_NAMES_SUFFIXES = (".txt", ".names")


def read_yolo_names(path: str | Path) -> list[str]:
    """Class names of a YOLO names file, in label order.

    A data.yaml holds ``names: [a, b]`` or ``names: {0: a, 1: b}`` (keys 0..n-1); an ``nc``
    entry, if present, must equal the number of names. A classes.txt (suffix .txt or .names)
    holds one name a line (blank lines ignored).

    Raises:
        DataError: the file is missing, not YAML, its names are not such a list, or it names a
            class twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"YOLO names file not found: {path}", "missing annotation", path)
    names = (_read_plain_names(path) if path.suffix.lower() in PLAIN_NAMES_SUFFIXES
             else _read_yaml_names(path))
    check_distinct_class_names(names, f"YOLO names file {path}", path)
    return names


def _read_plain_names(path: Path) -> list[str]:
    """One class name a line."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"YOLO names file {path} has no class names; expected one name a line",
                        "bad annotation", path)
    return names


def _read_yaml_names(path: Path) -> list[str]:
    """The ``names`` of a data.yaml (see `read_yolo_names`)."""
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"YOLO names file {path} is not valid YAML: {err}", "bad annotation",
                        path) from None
    names = content.get("names") if isinstance(content, dict) else None
    expected = "expected 'names: [a, b, ...]' or 'names: {0: a, 1: b, ...}'"
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"YOLO names file {path}: the keys of 'names' must be 0..{len(names) - 1}, "
                            f"got {sorted(names, key=str)}; {expected}", "bad annotation", path)
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"YOLO names file {path} has no class names; {expected}", "bad annotation",
                        path)
    names = [str(name) for name in names]
    count = content.get("nc")
    if count is not None and count != len(names):
        raise DataError(f"YOLO names file {path}: nc is {count} but 'names' lists {len(names)} "
                        "classes", "bad annotation", path)
    return names


# The data.yaml keys of the Ultralytics layout that name the training and validation images.
TRAIN_SPLIT_KEY, TEST_SPLIT_KEY = "train", "val"


def data_yaml_split(names_path: str | Path, key: str) -> str | None:
    """The split folder a data.yaml names under `key` (TRAIN_SPLIT_KEY or TEST_SPLIT_KEY) in the
    Ultralytics form ``train: images/<split>``, or None when the file is not a data.yaml, has no
    such entry, or the entry is another form (a list, a file of paths, a folder elsewhere).
    A name that could lead out of images/ ("..", a hidden name) is not taken."""
    names_path = Path(names_path)
    if names_path.suffix.lower() in PLAIN_NAMES_SUFFIXES or not names_path.is_file():
        return None
    try:
        content = yaml.safe_load(names_path.read_text())
    except yaml.YAMLError:
        return None  # read_yolo_names reports the file
    value = content.get(key) if isinstance(content, dict) else None
    parts = Path(value).parts if isinstance(value, str) else ()
    if len(parts) != 2 or parts[0] != "images":
        return None
    split = parts[1]
    return split if safe_file_name(split, f"{names_path}: {key}") == split else None


def parse_yolo_labels(path: str | Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one YOLO label file; a missing file is an image without objects.

    Args:
        path: the .txt file, lines ``class cx cy w h`` (blank lines ignored).
        num_classes: labels must lie in 0..num_classes-1.

    Returns:
        boxes float64 [n, 4] normalised (xmin, ymin, xmax, ymax), not clipped; labels int64 [n].

    Raises:
        DataError naming the file and line: wrong field count, not numbers, a class that is not
        an integer in range, or a corner more than EDGE_TOLERANCE outside [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        return np.zeros((0, 4)), np.zeros((0,), np.int64)
    rows, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"Label file {path} line {number}"
        if len(fields) != LABEL_FIELDS:
            raise DataError(f"{where}: expected {LABEL_FIELDS} numbers 'class cx cy w h', got "
                            f"{len(fields)} fields: {line.strip()!r}", "bad annotation", path)
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise DataError(f"{where}: expected numbers 'class cx cy w h', got {line.strip()!r}",
                            "bad annotation", path) from None
        label = values[0]
        if not label.is_integer() or not 0 <= label < num_classes:
            raise DataError(f"{where}: class {fields[0]} is out of range: expected an integer in "
                            f"0-{num_classes - 1} (the data set has {num_classes} classes)",
                            "unknown class", path)
        rows.append(values[1:])
        labels.append(int(label))
    centre_size = np.asarray(rows, dtype=np.float64).reshape(-1, 4)  # [n, (cx, cy, w, h)]
    half = centre_size[:, 2:] / 2
    boxes = np.concatenate([centre_size[:, :2] - half, centre_size[:, :2] + half], axis=1)  # [n, 4]
    outside = np.any((boxes < -EDGE_TOLERANCE) | (boxes > 1 + EDGE_TOLERANCE), axis=1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DataError(f"Label file {path}: box {row + 1} {rows[row]} (cx cy w h) lies outside the "
                        "image; YOLO values are normalised to [0, 1] by the image width and height, "
                        "not pixels", "bad annotation", path)
    return boxes, np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------- dataset
class YOLODataset(DetectionDataset):
    """Images and boxes of one split of a YOLO-format data set.

    Args:
        root: the folder holding images/, labels/ and the names file.
        split: the sub-folder of images/ and labels/, e.g. "train" or "val".
        class_names: classes in label order; when the names file exists too, they must agree.
        names_file: the names file (data.yaml, or a classes.txt of one name a line), relative
            to `root`.
        transform: called as ``transform(image, boxes, labels)`` by ``ds[i]``.
        keep_empty: keep images without objects.
        skip_bad: count and skip bad files instead of raising.
        verbose: print the one-line load summary.

    Attributes:
        class_names (list[str]); image_ids (list[str], "{split}/{stem}"); report (LoadReport);
        coordinate_origin (0.0): `get_annotation` boxes are ``normalised * size`` pixels.
    """

    coordinate_origin = 0.0

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str] | None = None,
        names_file: str = "data.yaml",
        transform: Callable | None = None,
        keep_empty: bool = True,
        skip_bad: bool = False,
        verbose: bool = True,
    ):
        super().__init__(transform=transform, keep_difficult=False, skip_bad=skip_bad)
        self.root = Path(root)
        self.split = str(split)
        self.class_names = self._class_names(class_names, self.root / names_file)
        self.report.name = f"YOLO {self.root.name}/{self.split}"
        image_dir, label_dir = self.root / "images" / self.split, self.root / "labels" / self.split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"YOLO image folder not found: {image_dir} (expected "
                                    f"{self.root}/images/<split>/ and {self.root}/labels/<split>/)")
        images = list_images(image_dir)
        label_stems = sorted(p.stem for p in label_dir.glob("*.txt")) if label_dir.is_dir() else []
        for stem in label_stems:
            if stem not in images:
                self._handle(DataError(
                    f"Label file {label_dir / stem}.txt has no image: expected {image_dir / stem}.jpg "
                    "(or another image extension)", "missing image", label_dir / f"{stem}.txt"))
        for stem in sorted(images):
            try:
                record = self._parse(image_dir / images[stem], label_dir / f"{stem}.txt", stem)
            except DataError as err:
                self._handle(err)
                continue
            self._add(record, keep_empty)
        self._print_summary(verbose)

    @staticmethod
    def _class_names(given: Sequence[str] | None, names_path: Path) -> list[str]:
        if not names_path.is_file():
            if given is None:
                raise FileNotFoundError(f"YOLO names file not found: {names_path}; write one "
                                        "('names: [a, b, ...]') or give the class names "
                                        "(data.class_names)")
            check_distinct_class_names(given, "The class names given (data.class_names)")
            return list(given)
        names = read_yolo_names(names_path)
        if given is not None and list(given) != names:
            raise ValueError(f"class names {list(given)} do not agree with {names_path}: {names}; "
                             "give the same list in the same order (or none, to use the file's)")
        return names

    def _parse(self, image_path: Path, label_path: Path, stem: str) -> Record:
        boxes, labels = parse_yolo_labels(label_path, len(self.class_names))
        width, height = read_image_size(image_path)
        pixels = boxes * np.array([width, height, width, height])  # [n, 4]
        pixels, valid, clipped = sanitize_boxes(pixels, 0.0, width, height)
        self.report.clipped += clipped
        self.report.degenerate += int((~valid).sum())
        return Record(image_id=f"{self.split}/{stem}", image_path=image_path, width=width,
                      height=height, boxes=pixels[valid], labels=labels[valid],
                      difficult=np.zeros(int(valid.sum()), dtype=bool))
