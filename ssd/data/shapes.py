"""The synthetic shapes data set: the embedded default of the demo and the tests.

`make_shapes(root, num_train, num_test, image_size, seed)` writes a real VOCdevkit layout

    root/VOCshapes/JPEGImages/{id}.jpg
    root/VOCshapes/Annotations/{id}.xml          VOC schema (size, object/name, pose, truncated,
                                                 difficult, bndbox with 1-based pixels)
    root/VOCshapes/ImageSets/Main/{trainval,test}.txt
    root/VOCshapes/shapes.json                   the generation settings

Each image shows 1-6 filled shapes (circle, square, triangle, star, hexagon, cross) with a
random colour, rotation and size (longer box side 8%-80% of the image side, log-uniform) on a
textured, noisy background. Shapes are placed (and drawn) largest first; a position overlapping
an earlier object by IoU > 0.3, or covering more than 30% of the smaller box, is redrawn, so no
object is mostly hidden. Objects whose longer side is under 12% of the image are marked difficult.

Image k of a split is a pure function of (seed, split, k): `sample_objects` and `render_image`
are deterministic for a generator, which the tests use to check the files exactly.
"""

from __future__ import annotations

import colorsys
import contextlib
import itertools
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

import cv2
import numpy as np

from ssd.data.common import DataError
from ssd.fileio import replace_directory
from ssd.progress import progress_bar
from ssd.system import usable_cores

SHAPES_CLASSES = ("circle", "square", "triangle", "star", "hexagon", "cross")
SHAPES_FORMAT_VERSION = 1  # bump when the images change for the same settings
MIN_SIZE, MAX_SIZE = 0.08, 0.80  # longer box side / image side
DIFFICULT_SIZE = 0.12  # smaller objects are marked difficult
MAX_OBJECTS = 6
MAX_IOU = 0.3  # with any earlier object
MAX_COVER = 0.3  # intersection / area of the smaller box
PLACEMENT_TRIES = 30  # per object; an object that finds no place is left out
ASPECT_JITTER = 0.15  # shapes are stretched by up to +-15% before rotation
JPEG_QUALITY = 92
MANIFEST = "shapes.json"  # the generation settings; marks a folder the generator wrote
SPLIT_STREAMS = {"trainval": 0, "test": 1}  # selects the per-image generators of each split
CHUNK_SIZE = 100  # images per task handed to a worker process
JOBS_PER_WORKER_MIN = 200  # fewer images than this per worker: not worth another process


def _regular(corners: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(corners) / corners
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [corners, 2]


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    radii = np.tile([1.0, inner], points)
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [2p, 2]


def _cross(arm: float = 0.32) -> np.ndarray:
    a = arm
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                     [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)  # [12, 2]


# Outlines of each class around the origin, radius about 1 (polygons; the circle has 72 sides).
UNIT_SHAPES: dict[str, np.ndarray] = {
    "circle": _regular(72),
    "square": _regular(4, phase=np.pi / 4),
    "triangle": _regular(3),
    "star": _star(),
    "hexagon": _regular(6),
    "cross": _cross(),
}


@dataclass
class ShapeObject:
    """One drawn shape. Coordinates are continuous pixels (pixel i covers [i, i+1))."""

    label: int
    polygon: np.ndarray  # [k, 2] outline
    colour: tuple[int, int, int]  # BGR

    @property
    def box(self) -> np.ndarray:
        """[4] tight continuous box (x0, y0, x1, y1)."""
        return np.concatenate([self.polygon.min(axis=0), self.polygon.max(axis=0)])

    def voc_box(self, image_size: int) -> tuple[int, int, int, int]:
        """VOC 1-based inclusive pixels: the first and last pixel whose centre is inside."""
        x0, y0, x1, y1 = self.box
        first = np.ceil(np.array([x0, y0]) - 0.5).astype(int) + 1
        last = np.floor(np.array([x1, y1]) - 0.5).astype(int) + 1
        first = np.clip(first, 1, image_size)
        last = np.clip(np.maximum(last, first), 1, image_size)
        return int(first[0]), int(first[1]), int(last[0]), int(last[1])

    def difficult(self, image_size: int) -> bool:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0) < DIFFICULT_SIZE * image_size


def _box_overlaps(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """box [4], others [m, 4] -> (IoU [m], intersection / smaller area [m])."""
    low = np.maximum(box[:2], others[:, :2])
    high = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / (area + areas - inter), inter / np.minimum(area, areas)


def _random_shape(rng: np.random.Generator, image_size: int) -> ShapeObject:
    """A shape of random class, size, stretch, rotation and colour, its box at the origin."""
    label = int(rng.integers(len(SHAPES_CLASSES)))
    size = np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE))) * image_size
    stretch = 1.0 + rng.uniform(-ASPECT_JITTER, ASPECT_JITTER)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    outline = UNIT_SHAPES[SHAPES_CLASSES[label]] * (stretch, 1 / stretch) @ rotation.T  # [k, 2]
    outline -= outline.min(axis=0)
    outline *= size / outline.max()  # longer side of the box = size
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0)
    red, green, blue = colorsys.hsv_to_rgb(hue, sat, val)
    return ShapeObject(label, outline, (int(255 * blue), int(255 * green), int(255 * red)))


def _place(shape: ShapeObject, placed: list[ShapeObject], rng: np.random.Generator,
           image_size: int) -> ShapeObject | None:
    """`shape` moved to a random position that overlaps `placed` little enough, or None."""
    room = image_size - shape.polygon.max(axis=0)  # [2]
    others = np.stack([o.box for o in placed]) if placed else np.zeros((0, 4))
    for _ in range(PLACEMENT_TRIES):
        moved = ShapeObject(shape.label, shape.polygon + rng.uniform(0, 1, size=2) * room,
                            shape.colour)
        if placed:
            iou, cover = _box_overlaps(moved.box, others)
            if iou.max() > MAX_IOU or cover.max() > MAX_COVER:
                continue
        return moved
    return None


def sample_objects(rng: np.random.Generator, image_size: int) -> list[ShapeObject]:
    """1-6 shapes with limited overlap, in drawing order (largest first).

    All shapes are drawn first and placed largest first, so the sizes keep their log-uniform
    distribution (a shape that finds no place is left out; the first always fits).
    """
    shapes = [_random_shape(rng, image_size) for _ in range(rng.integers(1, MAX_OBJECTS + 1))]
    areas = [np.prod(s.box[2:] - s.box[:2]) for s in shapes]
    placed: list[ShapeObject] = []
    for index in np.argsort(areas, kind="stable")[::-1]:
        moved = _place(shapes[index], placed, rng, image_size)
        if moved is not None:
            placed.append(moved)
    return placed


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Textured background: a smooth low-saturation colour field plus stripes -> uint8 [S, S, 3]."""
    coarse = rng.uniform(60, 190, size=(4, 4, 3))
    grey = coarse.mean(axis=2, keepdims=True)
    coarse = np.rint(grey + 0.35 * (coarse - grey)).astype(np.uint8)  # muted colours
    field = cv2.resize(coarse, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    cycles, angle, phase = rng.uniform(2, 14), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(4, 18)
    axis = np.arange(image_size, dtype=np.float32) * np.float32(2 * np.pi * cycles / image_size)
    rows = axis * np.float32(np.sin(angle))  # the stripes: sin(rows[y] + cols[x] + phase)
    cols = axis * np.float32(np.cos(angle)) + np.float32(phase)
    wave = (np.sin(rows)[:, None] * np.cos(cols)[None, :]
            + np.cos(rows)[:, None] * np.sin(cols)[None, :])  # [S, S] float32
    stripes = (np.float32(amplitude) * wave)[..., None]  # [S, S, 1]
    return np.clip(field + stripes, 0, 255).astype(np.uint8)


def _add_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean triangular noise of random strength (std 3-12) on uint8 [S, S, 3]."""
    raw = np.frombuffer(rng.bytes(2 * image.size), dtype=np.uint8).reshape(2, *image.shape)
    noise = raw[0].astype(np.int16) + raw[1] - 255  # [S, S, 3], std 104.4 (sum of 2 uniforms)
    sigma = rng.uniform(3, 12)
    return cv2.addWeighted(image, 1.0, noise, sigma / 104.4, 0.0, dtype=cv2.CV_8U)


def render_image(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, list[ShapeObject]]:
    """One synthetic image: uint8 [S, S, 3] BGR and its objects (drawing order)."""
    objects = sample_objects(rng, image_size)
    image = _background(rng, image_size)
    for obj in objects:
        points = np.rint((obj.polygon - 0.5) * 16).astype(np.int32)  # cv2: pixel centres, 4 bits
        cv2.fillPoly(image, [points], obj.colour, lineType=cv2.LINE_AA, shift=4)
    return _add_noise(image, rng), objects


def voc_xml(image_id: str, image_size: int, objects: Sequence[ShapeObject]) -> str:
    """The VOC annotation of one image."""
    parts = [
        "<annotation>", "\t<folder>VOCshapes</folder>", f"\t<filename>{image_id}.jpg</filename>",
        "\t<source><database>synthetic shapes</database></source>",
        f"\t<size><width>{image_size}</width><height>{image_size}</height><depth>3</depth></size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.voc_box(image_size)
        parts += [
            "\t<object>", f"\t\t<name>{escape(SHAPES_CLASSES[obj.label])}</name>",
            "\t\t<pose>Unspecified</pose>", "\t\t<truncated>0</truncated>",
            f"\t\t<difficult>{int(obj.difficult(image_size))}</difficult>",
            f"\t\t<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
            f"<ymax>{ymax}</ymax></bndbox>",
            "\t</object>",
        ]
    return "\n".join(parts + ["</annotation>", ""])


def image_generator(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image `index` of `split` ("trainval" or "test")."""
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


def shapes_settings(num_train: int, num_test: int, image_size: int, seed: int) -> dict:
    """What shapes.json records (and `build_dataset` compares before reusing a data set)."""
    return dict(num_train=int(num_train), num_test=int(num_test), image_size=int(image_size),
                seed=int(seed), classes=list(SHAPES_CLASSES), version=SHAPES_FORMAT_VERSION)


def make_shapes(root: str | Path, num_train: int = 2000, num_test: int = 300,
                image_size: int = 300, seed: int = 0, workers: int | None = None,
                progress: bool = False) -> list[str]:
    """Write the shapes data set under root/VOCshapes (replacing one this generator wrote).

    An existing root/VOCshapes is replaced only when it is the generator's own: it holds the
    shapes.json manifest and no file the generator does not write. Anything else (a hand-made or
    hand-extended folder) is left untouched and stops with a DataError naming the folder.

    The files are written to a temporary folder that is renamed into place at the end, so an
    interrupted run (or another process reading) never sees a half-written data set. Images are
    rendered by `workers` processes (default: one per CPU core); every image is a pure function
    of (seed, split, index), so the files do not depend on the number of workers.

    Returns:
        the class names, in label order.
    """
    if min(num_train, num_test) < 0 or image_size < 32:
        raise ValueError(f"make_shapes needs num_train, num_test >= 0 and image_size >= 32; got "
                         f"{num_train}, {num_test}, {image_size}")
    root = Path(root)
    target = root / "VOCshapes"
    check_replaceable(target)
    staging = root / f".VOCshapes-tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (staging / sub).mkdir(parents=True)
    jobs = []  # (split, index in split, image id)
    start = 0
    for split, count in (("trainval", num_train), ("test", num_test)):
        ids = [f"{start + k:06d}" for k in range(count)]
        jobs += [(split, k, image_id) for k, image_id in enumerate(ids)]
        (staging / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        start += count
    _write_images(staging, jobs, image_size, seed, workers, progress)
    settings = shapes_settings(num_train, num_test, image_size, seed)
    (staging / MANIFEST).write_text(json.dumps(settings, indent=2))
    replace_directory(staging, target)
    return list(SHAPES_CLASSES)


def _write_images(folder: Path, jobs: Sequence[tuple[str, int, str]], image_size: int, seed: int,
                  workers: int | None, progress: bool) -> None:
    """Render and write every (split, index, image id) of `jobs` into `folder`."""
    if workers is None:  # one per core, but not for a few images (a process costs ~0.1 s)
        workers = min(usable_cores(), max(1, len(jobs) // JOBS_PER_WORKER_MIN))
    workers = max(1, workers)
    chunk_size = max(1, min(CHUNK_SIZE, -(-len(jobs) // workers)))
    chunks = [jobs[i:i + chunk_size] for i in range(0, len(jobs), chunk_size)]
    bar = progress_bar(total=len(jobs), desc="shapes", unit="img", enabled=progress)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=_pool_context()))
            done = pool.map(_write_chunk, itertools.repeat(folder), chunks,
                            itertools.repeat(image_size), itertools.repeat(seed))
        else:
            done = map(_write_chunk, itertools.repeat(folder), chunks, itertools.repeat(image_size),
                       itertools.repeat(seed))
        for written in done:
            bar.update(written)
    bar.close()


def _pool_context():
    """fork where it exists (fast start, no re-import), else the platform default."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _write_chunk(folder: Path, jobs: Sequence[tuple[str, int, str]], image_size: int, seed: int) -> int:
    for split, k, image_id in jobs:
        image, objects = render_image(image_generator(seed, split, k), image_size)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode shapes image {image_id}")
        (folder / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
        (folder / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, image_size, objects))
    return len(jobs)


def generated_files(settings: dict) -> set[str]:
    """The files (relative to VOCshapes/) that make_shapes writes for `settings`."""
    count = int(settings["num_train"]) + int(settings["num_test"])
    files = {MANIFEST, "ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt"}
    for k in range(count):
        files |= {f"JPEGImages/{k:06d}.jpg", f"Annotations/{k:06d}.xml"}
    return files


def check_replaceable(target: Path) -> None:
    """Raise DataError unless `target` is missing or holds only what make_shapes wrote."""
    if not target.exists():
        return
    keep = ("it is left untouched: move it away, or point data.root (make_shapes.py --root) "
            "at another folder")
    settings = read_shapes_settings(target.parent)
    if settings is None:
        raise DataError(f"{target} exists but has no {MANIFEST} manifest, so the shapes generator "
                        f"did not write it (or it was edited); {keep}", "not generated", target)
    try:
        expected = generated_files(settings)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{target / MANIFEST} is not a shapes manifest; {keep}", "not generated",
                        target) from None
    found = {path.relative_to(target).as_posix() for path in target.rglob("*") if path.is_file()}
    foreign = sorted(found - expected)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(f"{target} holds files the shapes generator did not write ({shown}); {keep}",
                        "not generated", target)


def read_shapes_settings(root: str | Path) -> dict | None:
    """The settings of the shapes data set under `root`, or None if there is none."""
    path = Path(root) / "VOCshapes" / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
