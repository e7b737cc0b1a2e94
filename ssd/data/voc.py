"""PASCAL VOC and any data set in the VOCdevkit layout (including the synthetic shapes).

    root/VOC{year}/ImageSets/Main/{split}.txt   one image id per line
    root/VOC{year}/Annotations/{id}.xml         VOC XML: size, object/{name, difficult, bndbox}
    root/VOC{year}/JPEGImages/{id}.jpg          (other image extensions are found too)

Folders as annotation tools write them (Annotations/ + JPEGImages/ without split files, or one
folder of images and XML files) are read through `VOCSplit`s; see ssd.data.voc_layout.

XML coordinates are 1-based pixels; the training targets are ``(value - 1) / width`` (or
height), the convention of the published SSD ports. An image id must name a file inside
Annotations/ (an id such as ../../x is a "bad annotation" naming the split file and the id).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ssd.commands import clone_doc
from ssd.data.common import (
    DataError,
    DetectionDataset,
    Record,
    check_distinct_class_names,
    list_images,
    sanitize_boxes,
)
from ssd.fileio import path_inside

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
VOC_DOWNLOAD_HINT = (
    "PASCAL VOC cannot be downloaded by this project: get VOCtrainval_06-Nov-2007.tar, "
    "VOCtest_06-Nov-2007.tar and VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC) "
    "and extract them under data/ so that data/VOCdevkit/VOC2007 and data/VOCdevkit/VOC2012 "
    "exist"
)
VOC_LAYOUT_HINT = ("a VOC data set is <data.root>/VOC<year>/ with Annotations/, JPEGImages/ "
                   "and ImageSets/Main/<split>.txt, or data.root itself holding Annotations/ + "
                   "JPEGImages/ or images beside their XML files")


@dataclass
class VOCAnnotation:
    """One parsed XML file. Boxes [n, 4] float32 as written (1-based pixels)."""

    width: int
    height: int
    boxes: np.ndarray  # [n, 4] float32 (xmin, ymin, xmax, ymax)
    labels: np.ndarray  # [n] int64
    difficult: np.ndarray  # [n] bool
    truncated: np.ndarray  # [n] bool


def _text(node: ET.Element, tag: str, path: Path, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"Annotation {path}: {where} is missing the required field <{tag}>",
                        "bad annotation", path)
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path, where: str) -> float:
    text = _text(node, tag, path, where)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"Annotation {path}: {where} <{tag}> is not a number: {text!r}",
                        "bad annotation", path) from None


def _flag(node: ET.Element, tag: str) -> bool:
    """Optional 0/1 field (difficult, truncated); absent means 0."""
    child = node.find(tag)
    return child is not None and child.text is not None and child.text.strip() in ("1", "1.0")


def parse_voc_xml(path: str | Path, class_to_label: dict[str, int]) -> VOCAnnotation:
    """Parse one VOC XML annotation.

    Args:
        path: the .xml file.
        class_to_label: class name -> 0-based label; any other name is an error.

    Raises:
        DataError: the file is missing, not XML, lacks a required field (size/width,
            size/height, object/name, object/bndbox/{xmin,ymin,xmax,ymax}) or names an
            unknown class. Messages name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Annotation file not found: {path}", "missing annotation", path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"Annotation {path} is not valid XML: {err}", "bad annotation",
                        path) from None
    size = root.find("size")
    if size is None:
        raise DataError(f"Annotation {path}: <annotation> is missing the required field <size>",
                        "bad annotation", path)
    width = int(_number(size, "width", path, "<size>"))
    height = int(_number(size, "height", path, "<size>"))
    if width <= 0 or height <= 0:
        raise DataError(f"Annotation {path}: image size {width}x{height} is not positive",
                        "bad annotation", path)
    boxes, labels, difficult, truncated = [], [], [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        where = f"object {number}"
        name = _text(obj, "name", path, where)
        if name not in class_to_label:
            raise DataError(f"Annotation {path}: {where} has unknown class '{name}'; known "
                            f"classes: {', '.join(class_to_label)}", "unknown class", path)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"Annotation {path}: {where} is missing the required field <bndbox>",
                            "bad annotation", path)
        where = f"{where} <bndbox>"
        boxes.append([_number(bndbox, tag, path, where) for tag in BOX_FIELDS])
        labels.append(class_to_label[name])
        difficult.append(_flag(obj, "difficult"))
        truncated.append(_flag(obj, "truncated"))
    return VOCAnnotation(
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
    )


def read_split(path: Path) -> list[str]:
    """Image ids of an ImageSets/Main/{split}.txt file (first token of each non-empty line)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_annotation_file(annotations: Path, image_id: str, listed_in: Path) -> Path:
    """annotations/{image_id}.xml for an id read from `listed_in` (a split file, or the folder
    whose files gave the ids).

    Raises:
        DataError ("bad annotation"): the id leads out of `annotations` (absolute, "..", a link
            out); the message names `listed_in` and the id.
    """
    try:
        return path_inside(annotations, f"{image_id}.xml", f"{listed_in}: image id {image_id!r} as")
    except ValueError as err:
        raise DataError(str(err), "bad annotation", listed_in) from None


@dataclass(frozen=True)
class VOCSplit:
    """The images of one split: each id's XML is `annotations`/<id>.xml and its image the file
    of that stem in `images` (.jpg preferred, see IMAGE_EXTENSIONS)."""

    name: str  # for the load summary, e.g. "VOC2007/test" or "cells/train"
    annotations: Path
    images: Path
    ids: tuple[str, ...]
    id_prefix: str = ""  # image_id = id_prefix + id, e.g. "VOC2007/"
    split_file: Path | None = None  # the file that listed the ids, if any


def devkit_split(root: str | Path, year: str, split: str) -> VOCSplit:
    """The split root/VOC{year}/ImageSets/Main/{split}.txt of a VOCdevkit.

    Raises:
        FileNotFoundError: the split file does not exist (with how to get PASCAL VOC).
    """
    year_dir = Path(root) / f"VOC{year}"
    split_file = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        hint = VOC_DOWNLOAD_HINT if year in ("2007", "2012") else VOC_LAYOUT_HINT
        hint += clone_doc("data/README.md")
        found = "" if year_dir.is_dir() else f" ({year_dir} does not exist)"
        raise FileNotFoundError(f"VOC split file not found: {split_file}{found}. {hint}")
    return VOCSplit(f"VOC{year}/{split}", year_dir / "Annotations", year_dir / "JPEGImages",
                    tuple(read_split(split_file)), id_prefix=f"VOC{year}/", split_file=split_file)


class VOCDataset(DetectionDataset):
    """Images and boxes of one or more VOCdevkit splits.

    Args:
        root: the VOCdevkit directory holding VOC{year}/ folders.
        image_sets: (year, split) pairs, e.g. [("2007", "trainval"), ("2012", "trainval")];
            ("shapes", "test") reads root/VOCshapes. A `VOCSplit` is read as it says (a
            folder outside the VOCdevkit layout).
        class_names: foreground classes in label order (default: the 20 VOC classes).
        transform: called as ``transform(image, boxes, labels)`` by ``ds[i]``.
        keep_difficult: return difficult objects from ``ds[i]`` (the evaluator always gets them
            from `get_annotation`).
        keep_empty: keep images without (non-difficult) objects.
        skip_bad: count and skip bad files instead of raising.
        verbose: print the one-line load summary.

    Attributes:
        class_names (list[str]); image_ids (list[str], "VOC{year}/{id}"; a VOCSplit's
        id_prefix + id); report (LoadReport);
        split_files (list[Path]): the ImageSets/Main/{split}.txt (or VOCSplit) files read;
        coordinate_origin (1.0): ``ds[i]`` normalises ``(xml - 1) / size``, so
        ``get_annotation`` boxes minus 1 are in the frame of ``normalised * size``.
    """

    coordinate_origin = 1.0

    def __init__(
        self,
        root: str | Path,
        image_sets: Sequence[Sequence[str]],
        class_names: Sequence[str] | None = None,
        transform: Callable | None = None,
        keep_difficult: bool = False,
        keep_empty: bool = True,
        skip_bad: bool = False,
        verbose: bool = True,
    ):
        super().__init__(transform=transform, keep_difficult=keep_difficult, skip_bad=skip_bad)
        self.root = Path(root)
        self.split_files: list[Path] = []
        self.class_names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        check_distinct_class_names(self.class_names, "The class names given (data.class_names)")
        class_to_label = {name: label for label, name in enumerate(self.class_names)}
        self._class_to_label = class_to_label
        sets = [item if isinstance(item, VOCSplit) else (str(item[0]), str(item[1]))
                for item in image_sets]
        self.report.name = f"VOC {self.root}: " + " + ".join(
            item.name if isinstance(item, VOCSplit) else f"VOC{item[0]}/{item[1]}" for item in sets)
        for item in sets:
            split = item if isinstance(item, VOCSplit) else devkit_split(self.root, *item)
            self._load_split(split, class_to_label, keep_empty)
        self._print_summary(verbose)

    def _load_split(self, split: VOCSplit, class_to_label: dict[str, int], keep_empty: bool) -> None:
        if split.split_file is not None:
            self.split_files.append(split.split_file)
        images = list_images(split.images)
        for image_id in split.ids:
            try:
                record = self._parse(split, image_id, images, class_to_label)
            except DataError as err:
                self._handle(err)
                continue
            self._add(record, keep_empty)

    def _parse(self, split: VOCSplit, image_id: str, images: dict[str, str],
               class_to_label: dict[str, int]) -> Record:
        xml_path = voc_annotation_file(split.annotations, image_id, split.split_file or split.annotations)
        parsed = parse_voc_xml(xml_path, class_to_label)
        if image_id not in images:
            expected = split.images / f"{image_id}.jpg"
            raise DataError(f"Image file not found: {expected} (annotated in {xml_path})",
                            "missing image", expected)
        boxes, valid, clipped = sanitize_boxes(parsed.boxes, 1.0, parsed.width, parsed.height)
        self.report.clipped += clipped
        self.report.degenerate += int((~valid).sum())
        return Record(
            image_id=f"{split.id_prefix}{image_id}",
            image_path=split.images / images[image_id],
            width=parsed.width,
            height=parsed.height,
            boxes=boxes[valid],
            labels=parsed.labels[valid],
            difficult=parsed.difficult[valid],
            extra={"truncated": parsed.truncated[valid]},
            annotation_path=xml_path,
        )

    def _objects_at_size(self, record: Record, width: int, height: int):
        """The XML's boxes clipped to the real image size (those clipped to the annotated size
        at load time may reach further)."""
        try:
            parsed = parse_voc_xml(record.annotation_path, self._class_to_label)
        except DataError:  # changed since loading: clip what was loaded
            return super()._objects_at_size(record, width, height)
        boxes, valid, _ = sanitize_boxes(parsed.boxes, self.coordinate_origin, width, height)
        return boxes[valid], parsed.labels[valid], parsed.difficult[valid]
