"""COCO-format data sets (annotation JSON + image folder) read through pycocotools.

Category ids (1..90 with gaps for COCO 2017) map to contiguous 0-based labels in increasing id
order; `label_to_category_id` maps back when writing results. Boxes are converted from the
JSON's (x, y, w, h) to (xmin, ymin, xmax, ymax) pixels; crowd objects (iscrowd=1) are left out
of the training targets and reported to the evaluator as difficult. An image's `file_name` must
lead to a file inside the image folder (sub-folders are fine; an absolute path, "..", or a link
out of the folder is a "bad annotation" naming the annotation file and the value).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pycocotools.coco import COCO

from ssd.data.common import DataError, DetectionDataset, Record, check_distinct_class_names, sanitize_boxes
from ssd.fileio import path_inside


def load_coco(annotation_file: str | Path) -> COCO:
    """pycocotools' COCO index of `annotation_file`, its progress prints silenced.

    Raises:
        DataError: the file is missing or is not a COCO annotation JSON (names the file).
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}", "missing annotation", path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"COCO annotation file {path} is not valid JSON: {err}",
                        "bad annotation", path) from None
    except (KeyError, TypeError, AssertionError) as err:
        raise DataError(f"COCO annotation file {path} is malformed (missing or wrong field "
                        f"{err!s}); expected images, annotations and categories lists",
                        "bad annotation", path) from None


class COCODataset(DetectionDataset):
    """Images and boxes of a COCO-format annotation file.

    Args:
        annotation_file: e.g. data/coco/annotations/instances_val2017.json.
        image_dir: the folder holding the images' `file_name`s (each must stay inside it).
        transform: called as ``transform(image, boxes, labels)`` by ``ds[i]``.
        skip_bad: count and skip bad images/annotations instead of raising.
        keep_empty: keep images without non-crowd objects.
        verbose: print the one-line load summary.

    Attributes:
        class_names (list[str]), image_ids (list[str]: str of the COCO image id),
        coco_image_ids (list[int]), label_to_category_id (list[int], label -> category id),
        category_id_to_label (dict[int, int]), coco (pycocotools COCO), report (LoadReport).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        transform: Callable | None = None,
        skip_bad: bool = False,
        keep_empty: bool = True,
        verbose: bool = True,
    ):
        super().__init__(transform=transform, keep_difficult=False, skip_bad=skip_bad)
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.coco = load_coco(self.annotation_file)
        self.label_to_category_id = sorted(self.coco.cats)
        self.category_id_to_label = {cat: label for label, cat in
                                     enumerate(self.label_to_category_id)}
        self.class_names = [self.coco.cats[cat]["name"] for cat in self.label_to_category_id]
        check_distinct_class_names(self.class_names, f"The categories of COCO annotation file "
                                   f"{self.annotation_file}", self.annotation_file)
        self.report.name = f"COCO {self.annotation_file}"
        images = {p.name for p in self.image_dir.iterdir()} if self.image_dir.is_dir() else set()
        for image_id in sorted(self.coco.imgs):
            try:
                record = self._parse(image_id, images)
            except DataError as err:
                self._handle(err)
                continue
            self._add(record, keep_empty)
        self.coco_image_ids = [int(image_id) for image_id in self.image_ids]
        self._print_summary(verbose)

    def _parse(self, image_id: int, images: set[str]) -> Record:
        info = self.coco.imgs[image_id]
        where = f"COCO annotation file {self.annotation_file}: image {image_id}"
        try:
            file_name, width, height = info["file_name"], int(info["width"]), int(info["height"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{where} lacks a valid field {err!s} (file_name, width, height)",
                            "bad annotation", self.annotation_file) from None
        try:
            image_path = path_inside(self.image_dir, file_name, f"{where}: file_name")
        except ValueError as err:
            raise DataError(str(err), "bad annotation", self.annotation_file) from None
        if file_name not in images and not image_path.is_file():  # one listing, rare stats
            raise DataError(f"Image file not found: {image_path} ({where})", "missing image",
                            image_path)
        boxes, labels, crowd = self._objects(self.coco.imgToAnns.get(image_id, []), where)
        boxes, valid, clipped = sanitize_boxes(boxes, 0.0, width, height)
        self.report.clipped += clipped
        self.report.degenerate += int((~valid).sum())
        return Record(image_id=str(image_id), image_path=image_path, width=width, height=height,
                      boxes=boxes[valid], labels=labels[valid], difficult=crowd[valid],
                      annotation_path=self.annotation_file)

    def _objects(self, annotations: list[dict[str, Any]], where: str):
        """-> boxes [n, 4] xyxy pixels, labels int64 [n], crowd bool [n]."""
        boxes, labels, crowd = [], [], []
        for ann in annotations:
            category = ann.get("category_id")
            if category not in self.category_id_to_label:
                known = ", ".join(f"{cat}={self.coco.cats[cat]['name']}"
                                  for cat in self.label_to_category_id)
                raise DataError(f"{where}: annotation {ann.get('id')} has unknown category_id "
                                f"{category!r}; known categories: {known}", "unknown class",
                                self.annotation_file)
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DataError(f"{where}: annotation {ann.get('id')} needs a bbox [x, y, w, h], "
                                f"got {bbox!r}", "bad annotation", self.annotation_file)
            boxes.append(bbox)
            labels.append(self.category_id_to_label[category])
            crowd.append(bool(ann.get("iscrowd", 0)))
        xywh = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # [n, 4]
        return xyxy, np.asarray(labels, dtype=np.int64), np.asarray(crowd, dtype=bool)
