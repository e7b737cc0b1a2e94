"""What a data set holds, as training reads it: images, objects per class, bad files, boxes the
readers dropped or clipped, duplicates, box shapes, and how well the priors cover the boxes.

    report = check_dataset(dataset, priors, image_size=300, iou_threshold=0.5)
    report["objects_per_class"], report["coverage"]["covered"], ...

The data set is one `build_dataset` made (with data.skip_bad, so bad files are counted, not
raised). The readers' own rules decide what is dropped: `sanitize_boxes` clips boxes to the
image and drops those left without area (the load report's `clipped` and `degenerate`).
Images are decoded as training decodes them (`ssd.fileio.decode_image_file`): unreadable ones
(training stops, or with data.skip_bad uses a black image) and truncated ones (a JPEG cut
short, completed by libjpeg) are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ssd.box_utils import pairwise_iou
from ssd.data.common import DetectionDataset, Record
from ssd.data.image_cache import decode_all
from ssd.prior_coverage import coverage_summary, prior_coverage, size_buckets

# Two boxes of one class in one image whose IoU reaches this are counted as a duplicate.
DUPLICATE_IOU = 0.95
# Image checks.
IMAGE_OK, IMAGE_MISSING, IMAGE_UNREADABLE, IMAGE_TRUNCATED = "ok", "missing", "unreadable", "truncated"
# Bad files as the load report counts them (DataError reasons) -> the check's names.
SKIP_REASONS = {"missing image": "missing_images", "unreadable image": "unreadable_images"}


@dataclass
class ImageCheck:
    """One image file: its status (IMAGE_*) and decoded (height, width), None unless decoded."""

    status: str
    shape: tuple[int, int] | None = None


def check_image_file(path: str | Path) -> ImageCheck:
    """Decode `path` as `decode_image_file` does and say how it went: IMAGE_OK when the
    in-memory decoder reads it, IMAGE_TRUNCATED when only the file reader completes it (a JPEG
    cut short, which training uses as completed), IMAGE_UNREADABLE when neither does (or the
    file is empty), IMAGE_MISSING when it does not exist."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        return ImageCheck(IMAGE_MISSING)
    except OSError:
        return ImageCheck(IMAGE_UNREADABLE)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is not None:
        return ImageCheck(IMAGE_OK, image.shape[:2])
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if data.size else None
    if image is not None:
        return ImageCheck(IMAGE_TRUNCATED, image.shape[:2])
    return ImageCheck(IMAGE_UNREADABLE)


def check_images(records: Sequence[Record], threads: int | None = None) -> list[ImageCheck]:
    """`check_image_file` of every record's image, decoded by `threads` threads."""
    return decode_all(lambda index: check_image_file(records[index].image_path), len(records),
                      threads, progress=False)


def training_objects(dataset: DetectionDataset, record: Record) -> np.ndarray:
    """[n] bool: the record's objects the loss sees (difficult ones only with keep_difficult)."""
    return np.ones(len(record.labels), bool) if dataset.keep_difficult else ~record.difficult


def normalised_boxes(dataset: DetectionDataset, record: Record) -> np.ndarray:
    """[n, 4] float32 xyxy of the record's boxes divided by the annotated image size, as
    `load_sample` normalises them (after subtracting the format's coordinate origin)."""
    scale = np.array([record.width, record.height] * 2, dtype=np.float32)
    return (record.boxes - dataset.coordinate_origin) / scale


def duplicate_boxes(boxes: np.ndarray, labels: np.ndarray) -> int:
    """Boxes [n, 4] with an earlier box of the same label (labels [n]) at IoU >= DUPLICATE_IOU."""
    if len(boxes) < 2:
        return 0
    iou = pairwise_iou(torch.from_numpy(boxes), torch.from_numpy(boxes))  # [n, n]
    same = torch.from_numpy(labels[:, None] == labels[None, :])
    earlier = torch.ones_like(same).tril(diagonal=-1)  # [i, j]: j before i
    return int(((iou >= DUPLICATE_IOU) & same & earlier).any(dim=1).sum())


def shape_statistics(boxes: np.ndarray, image_size: int) -> dict[str, dict[str, float]]:
    """Width, height (in pixels of the network input), aspect ratio (width / height, as the
    network sees it) and area (fraction of the image) of normalised boxes [n, 4]:
    {quantity: {"min", "median", "max"}} (empty without boxes)."""
    if not len(boxes):
        return {}
    values = box_shapes(boxes, image_size)
    return {name: {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}
            for name, v in values.items()}


def box_shapes(boxes: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
    """{"width", "height", "aspect", "area"} [n] each of normalised xyxy boxes [n, 4]
    (see `shape_statistics` for the units)."""
    width = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    height = (boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    return {"width": width * image_size, "height": height * image_size,
            "aspect": width / np.maximum(height, np.finfo(np.float64).tiny), "area": width * height}


def check_dataset(dataset: DetectionDataset, priors_cxcywh: torch.Tensor, image_size: int,
                  iou_threshold: float, threads: int | None = None) -> dict[str, Any]:
    """Everything `ssd-data check` reports about one data set, as JSON-ready values.

    Args:
        dataset: as `build_dataset` returns it (its load report counts skipped files,
            clipped and dropped boxes).
        priors_cxcywh: [P, 4] the config's priors.
        image_size: model.image_size (pixel units of the shape statistics and size buckets).
        iou_threshold: loss.iou_threshold.
        threads: image decoding threads (default: the usable cores).

    Returns:
        a dict; "boxes" [N, 4] normalised training boxes, "labels" [N] and "boxes_per_image"
        are left out of the JSON by the caller (they feed the plots and the prior fit).
    """
    report = dataset.report
    names = list(dataset.class_names)
    images = check_images(dataset.records, threads)
    objects = np.zeros(len(names), np.int64)
    difficult = np.zeros(len(names), np.int64)
    without_objects = report.empty_removed
    duplicates = 0
    size_mismatch = 0
    per_image, labels = [], []
    for record, image in zip(dataset.records, images):
        np.add.at(objects, record.labels, 1)
        np.add.at(difficult, record.labels[record.difficult], 1)
        duplicates += duplicate_boxes(record.boxes, record.labels)
        if image.shape is not None and image.shape != (record.height, record.width):
            size_mismatch += 1
        kept = training_objects(dataset, record)
        without_objects += int(not kept.any())
        if kept.any():
            per_image.append(torch.from_numpy(normalised_boxes(dataset, record)[kept]))
            labels.append(record.labels[kept])
    statuses = [image.status for image in images]
    skipped = dict(report.skipped)
    boxes = torch.cat(per_image) if per_image else torch.zeros(0, 4)
    label_array = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    coverage = prior_coverage(per_image, priors_cxcywh, iou_threshold)
    buckets = size_buckets(boxes, image_size)
    by_class = coverage_summary(coverage, [names[label] for label in label_array], iou_threshold)
    by_size = coverage_summary(coverage, buckets, iou_threshold)
    return {
        "name": report.name,
        "images": len(dataset.records),
        "objects": int(objects.sum()),
        "objects_per_class": dict(zip(names, objects.tolist())),
        "difficult_objects": int(difficult.sum()),
        "difficult_per_class": dict(zip(names, difficult.tolist())),
        "images_without_objects": without_objects,
        "missing_images": skipped.get("missing image", 0) + statuses.count(IMAGE_MISSING),
        "unreadable_images": skipped.get("unreadable image", 0) + statuses.count(IMAGE_UNREADABLE),
        "truncated_images": statuses.count(IMAGE_TRUNCATED),
        "image_size_mismatches": size_mismatch,
        "skipped_files": {reason: n for reason, n in skipped.items()},
        "bad_files": [path for path, _ in report.skipped_files] + [
            str(record.image_path) for record, status in zip(dataset.records, statuses)
            if status != IMAGE_OK],
        "degenerate_boxes": report.degenerate,
        "clipped_boxes": report.clipped,
        "duplicate_boxes": duplicates,
        "training_boxes": len(boxes),
        "box_shapes": {names[label]: shape_statistics(boxes[label_array == label].numpy(), image_size)
                       for label in range(len(names))},
        "coverage": {"iou_threshold": iou_threshold, **{k: v for k, v in by_class.items() if k != "groups"},
                     "per_class": by_class["groups"], "per_size": by_size["groups"]},
        "boxes": boxes,
        "labels": label_array,
        "boxes_per_image": per_image,
    }


# Keys of `check_dataset`'s result that hold arrays, not report values.
ARRAY_KEYS = ("boxes", "labels", "boxes_per_image")


def json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """`check_dataset`'s result without its ARRAY_KEYS."""
    return {key: value for key, value in result.items() if key not in ARRAY_KEYS}
