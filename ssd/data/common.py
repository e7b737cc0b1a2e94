"""What every detection data set shares: errors that name the file, the load report, image
reading, box sanitising and the `ds[i]` packing.

A data set here is a `DetectionDataset`: it parses its annotations once on construction (so it
can count objects, skip bad files and drop empty images) and reads images lazily.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ssd import system
from ssd.data import image_cache
from ssd.data.transforms import resize_square
from ssd.fileio import decode_image_file

logger = logging.getLogger(__name__)

# What to do about a bad file when it stops a run (not said when data.skip_bad is already on).
SKIP_BAD_HINT = "fix or remove it, or set data.skip_bad=true to skip bad files"

# Image file types the readers look for when the annotation does not name the file.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data file is missing or malformed. The message names the file.

    A ValueError, so the scripts report it as a user error. Constructible from the message
    alone, so it survives being re-raised from a DataLoader worker.

    Attributes:
        reason: short category used to count skips ("missing image", "bad annotation", ...).
        path: the offending file.
    """

    def __init__(self, message: str, reason: str = "bad data", path: str | Path = ""):
        super().__init__(message)
        self.reason = reason
        self.path = str(path)


@dataclass
class LoadReport:
    """Counts gathered while loading a data set; `summary()` is the one line printed."""

    name: str
    images: int = 0
    objects: int = 0  # objects kept (difficult and crowd included)
    difficult: int = 0
    clipped: int = 0  # boxes partly outside the image, clipped to it
    degenerate: int = 0  # boxes of zero or negative size, dropped
    empty_removed: int = 0  # images without (training) objects left out (keep_empty=False)
    skipped: Counter = field(default_factory=Counter)  # reason -> number of files
    skipped_files: list = field(default_factory=list)  # (path, message) for each skip

    def skip(self, error: DataError) -> None:
        self.skipped[error.reason] += 1
        self.skipped_files.append((error.path, str(error)))

    def summary(self) -> str:
        """e.g. ``VOC2007/test: 4952 images, 14976 objects (1200 difficult); skipped 0``."""
        line = f"{self.name}: {self.images} images, {self.objects} objects"
        if self.difficult:
            line += f" ({self.difficult} difficult)"
        total = sum(self.skipped.values())
        line += f"; skipped {total}"
        if total:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            line += f" ({reasons}; first: {self.skipped_files[0][1]})"
        if self.clipped:
            line += f"; {self.clipped} boxes clipped to the image"
        if self.degenerate:
            line += f"; {self.degenerate} zero-size boxes dropped"
        if self.empty_removed:
            line += f"; {self.empty_removed} images without objects left out"
        return line


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] BGR (grey and alpha images converted).

    Raises:
        DataError: the file is missing ("missing image") or cannot be decoded
            ("unreadable image"); the message names the file.
    """
    try:
        image = decode_image_file(path)
    except FileNotFoundError:
        raise DataError(f"Image file not found: {path}", "missing image", path) from None
    except OSError as err:
        raise DataError(f"Cannot read image {path}: {err}", "unreadable image", path) from None
    if image is None:
        raise DataError(f"Cannot decode image {path} (empty, corrupt or not an image file)",
                        "unreadable image", path)
    return image


def with_skip_bad_hint(error: DataError) -> DataError:
    """`error` with SKIP_BAD_HINT appended (same reason and path)."""
    return DataError(f"{error}; {SKIP_BAD_HINT}", error.reason, error.path)


def list_images(directory: Path) -> dict[str, str]:
    """Map file stem -> file name for the image files of `directory` (one listing, no stats)."""
    if not directory.is_dir():
        return {}
    found: dict[str, str] = {}
    for entry in sorted(p.name for p in directory.iterdir()):
        stem, ext = Path(entry).stem, Path(entry).suffix.lower()
        if ext in IMAGE_EXTENSIONS and (stem not in found or ext == ".jpg"):
            found[stem] = entry
    return found


def check_distinct_class_names(names: Sequence[str], source: str, path: str | Path = "") -> None:
    """Raise DataError when `names` lists a class twice.

    Each label needs its own name: the metric's table, its results files and matching classes
    by name (evaluation, fine-tuning) all key on it, so a repeated name would hide a class.

    Args:
        names: class names in label order.
        source: where they come from, for the message (a file, a config key).
        path: the file, if any (DataError.path).
    """
    first_label: dict[str, int] = {}
    for label, name in enumerate(names):
        if name in first_label:
            raise DataError(f"{source} lists class '{name}' twice (labels {first_label[name]} and "
                            f"{label}); class names must be distinct", "bad annotation", path)
        first_label[name] = label


def sanitize_boxes(
    boxes: np.ndarray, low: float, width: float, height: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip xyxy boxes to the image and flag the ones with no area left.

    Args:
        boxes: [n, 4] (xmin, ymin, xmax, ymax) in the annotation's pixel frame.
        low: the smallest valid coordinate (1 for VOC's 1-based pixels, 0 for COCO).
        width, height: the largest valid x and y.

    Returns:
        clipped [n, 4] float32; valid [n] bool (positive width and height after clipping);
        number of valid boxes that clipping changed.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    upper = np.array([width, height, width, height], dtype=np.float32)
    clipped = np.clip(boxes, low, upper)
    valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = np.any(clipped != boxes, axis=1) & valid
    return clipped, valid, int(changed.sum())


def pack_target(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """boxes [n, 4] + labels [n] -> float32 [n, 5] (xmin, ymin, xmax, ymax, label)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    return np.concatenate([boxes, labels], axis=1)


def to_tensors(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
    """A transform's output -> (image Tensor[3, S, S] float32, target Tensor[n, 5] float32)."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # (S,S,3) -> (3,S,S)
    return torch.from_numpy(chw), torch.from_numpy(pack_target(boxes, labels))


@dataclass
class Record:
    """One image's parsed annotation. Boxes stay in the file's pixel frame, already clipped."""

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # [n, 4] float32 xyxy pixels
    labels: np.ndarray  # [n] int64, 0-based
    difficult: np.ndarray  # [n] bool (VOC difficult, COCO iscrowd)
    extra: dict = field(default_factory=dict)  # format-specific arrays, e.g. "truncated"
    annotation_path: Path | None = None  # the file holding width, height and boxes


class DetectionDataset(torch.utils.data.Dataset):
    """Base of the VOC and COCO readers.

    Subclasses fill `records` (one `Record` per kept image), `class_names` and `report`, and
    define `coordinate_origin` (1 for VOC's 1-based pixels, 0 for COCO), which is subtracted
    before normalising by the image size.
    """

    coordinate_origin = 0.0

    def __init__(self, transform: Callable | None = None, keep_difficult: bool = False,
                 skip_bad: bool = False):
        self.transform = transform
        self.keep_difficult = keep_difficult
        self.skip_bad = skip_bad
        self.records: list[Record] = []
        self.image_ids: list[str] = []  # records[i].image_id
        self.class_names: list[str] = []
        self.report = LoadReport(name=type(self).__name__)
        self._warned: set[str] = set()
        self._decoded: list[np.ndarray | None] | None = None  # see cache_images
        self._decoded_shapes: list[tuple[int, int] | None] = []  # (height, width) as decoded

    # --- what the rest of the project uses -------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def get_annotation(self, index: int) -> dict[str, Any]:
        """The evaluator's view of image `index`, difficult (and crowd) objects included.

        Returns:
            dict(image_id=str, width=int, height=int, boxes=float32 [n, 4] xyxy in the
            annotation file's pixel frame (clipped to the image), labels=int64 [n] 0-based,
            difficult=bool [n], plus format-specific arrays such as truncated=bool [n]).
        """
        record = self.records[index]
        annotation = dict(image_id=record.image_id, width=record.width, height=record.height,
                          boxes=record.boxes.copy(), labels=record.labels.copy(),
                          difficult=record.difficult.copy())
        annotation.update({key: value.copy() for key, value in record.extra.items()})
        return annotation

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The untransformed training sample of image `index`.

        Returns:
            image uint8 [H, W, 3] BGR; boxes float32 [n, 4] xyxy normalised to [0, 1]
            ((value - origin) / width or height); labels int64 [n] 0-based. Difficult (and crowd)
            objects are left out unless `keep_difficult`.

        When the decoded image's size differs from the annotation's, a warning names the file
        (once per file and process) and the boxes are clipped to and normalised by the image's
        real size.
        """
        record = self.records[index]
        image = self._read_image(record) if self._decoded is None else self._decoded[index]
        if image is None:  # unreadable and skip_bad: a black image without objects
            image = np.zeros((record.height, record.width, 3), dtype=np.uint8)
            return image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        # the boxes are normalised by the size decoding gives (a cached image may be resized)
        height, width = image.shape[:2] if self._decoded is None else self._decoded_shapes[index]
        boxes, labels, difficult = record.boxes, record.labels, record.difficult
        if (width, height) != (record.width, record.height):
            self._warn_once(str(record.image_path), (
                f"{record.annotation_path or 'The annotation'} gives the size of "
                f"{record.image_path} as {record.width}x{record.height}, but the image is "
                f"{width}x{height}; its boxes are clipped to and normalised by the real size"))
            boxes, labels, difficult = self._objects_at_size(record, width, height)
        keep = np.ones(len(labels), bool) if self.keep_difficult else ~difficult
        scale = np.array([width, height] * 2, dtype=np.float32)
        normalised = (boxes[keep] - self.coordinate_origin) / scale
        return image, normalised.astype(np.float32), labels[keep].astype(np.int64)

    def cache_images(self, threads: int | None = None, progress: bool = True,
                     size: int | None = None) -> int:
        """Decode every image now and keep it in memory for `load_sample` (see
        ssd.data.image_cache); returns the bytes the images take.

        The cache holds what decoding returns, read-only (a transform must not write into its
        input image); with `size`, the image resized to size x size (bilinear, as the
        transforms resize), for a transform that resizes every image to that size and does
        nothing else that depends on the original pixels (`resizes_only`): its outputs stay
        the same bit for bit. A bad image fails here as it would when read (a DataError naming
        it, or with skip_bad a warning and a black image).

        Raises:
            CacheTooLargeError: the images, by their annotated sizes, would take more than
                `image_cache.MAX_MEMORY_FRACTION` of the available memory; nothing is decoded.
        """
        sizes = [(size, size) if size else (r.width, r.height) for r in self.records]
        image_cache.check_cache_fits(image_cache.images_bytes(sizes), system.available_memory_bytes())
        entries = image_cache.decode_all(lambda i: self._cache_entry(i, size), len(self.records),
                                         threads, progress)
        self._decoded = [image for image, _ in entries]
        self._decoded_shapes = [shape for _, shape in entries]
        return sum(image.nbytes for image in self._decoded if image is not None)

    def _cache_entry(self, index: int, size: int | None) -> tuple[np.ndarray | None, tuple[int, int] | None]:
        """(image `index` as the cache holds it: read-only, resized to size x size when `size`;
        its (height, width) as decoded), or (None, None) for an unreadable image with skip_bad."""
        image = self._read_image(self.records[index])
        if image is None:
            return None, None
        held = image if size is None else resize_square(image, size)
        held.setflags(write=False)  # a transform writing into it would change the data set
        return held, image.shape[:2]

    def __getitem__(self, index: int):
        """Without a transform: (image uint8 [H, W, 3] BGR, target float32 ndarray [n, 5]).

        With a transform: (image Tensor[3, S, S] float32, target Tensor[n, 5] float32) from
        ``transform(image, boxes, labels)``; rows are (xmin, ymin, xmax, ymax, label).
        """
        image, boxes, labels = self.load_sample(index)
        if self.transform is None:
            return image, pack_target(boxes, labels)
        image, boxes, labels = self.transform(image, boxes, labels)
        return to_tensors(image, boxes, labels)

    # --- helpers for subclasses -------------------------------------------------------------

    def _read_image(self, record: Record) -> np.ndarray | None:
        try:
            return read_image(record.image_path)
        except DataError as err:
            if not self.skip_bad:
                raise with_skip_bad_hint(err) from None
            self._warn_once(err.path, f"{err} -- data.skip_bad: using a black image without objects")
            return None

    def _warn_once(self, path: str, message: str) -> None:
        """Log `message` as a warning the first time `path` comes up (per loader worker)."""
        if path not in self._warned:
            self._warned.add(path)
            logger.warning(message)

    def _objects_at_size(self, record: Record, width: int, height: int):
        """(boxes [n, 4], labels [n], difficult [n]) of `record` clipped to a `width` x `height`
        image (the record's boxes were clipped to the annotated size); boxes left without area
        are dropped. Formats that can re-read the original boxes override this."""
        boxes, valid, _ = sanitize_boxes(record.boxes, self.coordinate_origin, width, height)
        return boxes[valid], record.labels[valid], record.difficult[valid]

    def _add(self, record: Record, keep_empty: bool) -> None:
        """Keep `record` unless it has no training objects and empty images are not wanted."""
        training = record.labels if self.keep_difficult else record.labels[~record.difficult]
        if len(training) == 0 and not keep_empty:
            self.report.empty_removed += 1
            return
        self.records.append(record)
        self.image_ids.append(record.image_id)
        self.report.images += 1
        self.report.objects += len(record.labels)
        self.report.difficult += int(record.difficult.sum())

    def _handle(self, error: DataError) -> None:
        """Per-file error: raise it, or count it as a skip when `skip_bad`."""
        if not self.skip_bad:
            raise with_skip_bad_hint(error)
        self.report.skip(error)

    def _print_summary(self, verbose: bool) -> None:
        if verbose:
            logger.info(self.report.summary())
