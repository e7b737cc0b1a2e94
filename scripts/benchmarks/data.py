"""Data section: SSDAugmentation throughput against a straightforward per-op numpy baseline,
and the real training loader's images/s per worker count.

Both run in this process with OpenCV on one thread (as in a loader worker), on JPEG-decoded
500x375 images with 3 boxes each, and draw their random choices with the same probabilities.
The baseline is the classic port's structure: convert to float32 once, then one full-image pass
per operation (brightness, contrast, HSV round trip, channel swap), a materialised zoom-out
canvas, a crop search that tries one patch at a time, a mirror copy, resize and mean subtraction.

The loader part reads batches of a shapes config (--config; default the demo's,
configs/shapes.yaml: its augmentation, image size and batch; configs/shapes300.yaml has the full
SSD augmentation at 300 px) through ``make_train_loader`` from a shapes set generated in a temporary folder,
for each worker count given (default 0, 1, 2; ``--workers 0 4 8 15`` on a big machine), after
two warm-up batches, once decoding every image as it is read and once from decoded images held
in memory (data.cache_images); and, with the workers' queue full, the main process's own cost of receiving
a batch (what bounds the loader however many workers run).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks import DEMO_CONFIG
from ssd.config import load_config
from ssd.data import build_dataset, build_transform, make_train_loader
from ssd.data.image_cache import cached_image_size
from ssd.data.loader import PREFETCH_BATCHES_PER_WORKER
from ssd.data.shapes import render_image
from ssd.data.transforms import CROP_MIN_IOUS, CROP_TRIALS, SSDAugmentation

SIZE = 300
MEAN = (104.0, 117.0, 123.0)
DEFAULT_WORKERS = (0, 1, 2)
LOADER_IMAGES = 256  # of the generated shapes set
BATCHES_PER_WORKER = 4  # at least this many batches per worker in a timed round
QUEUE_FILL_SECONDS = 3.0  # idle time that lets the workers fill their prefetch queue


def _iou(boxes: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """boxes [n, 4] vs one patch [4] -> IoU [n]."""
    low = np.maximum(boxes[:, :2], patch[:2])
    high = np.minimum(boxes[:, 2:], patch[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (areas + np.prod(patch[2:] - patch[:2]) - inter)


class PerOpBaseline:
    """The same augmentation written op by op on float32 images (the reference speed)."""

    def __init__(self, size: int = SIZE, mean=MEAN):
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32)

    def __call__(self, image, boxes, labels, rng):
        img = image.astype(np.float32)
        height, width = img.shape[:2]
        boxes = boxes * np.array([width, height, width, height], dtype=np.float32)
        img = self._photometric(img, rng)
        img, boxes = self._expand(img, boxes, rng)
        img, boxes, labels = self._crop(img, boxes, labels, rng)
        if rng.random() < 0.5:
            img = img[:, ::-1].copy()
            boxes = boxes.copy()
            boxes[:, 0::2] = img.shape[1] - boxes[:, 2::-2]
        height, width = img.shape[:2]
        boxes = boxes / np.array([width, height, width, height], dtype=np.float32)
        img = cv2.resize(img, (self.size, self.size))
        img -= self.mean
        return img[:, :, ::-1].copy(), boxes, labels

    def _photometric(self, img, rng):
        if rng.random() < 0.5:
            img += rng.uniform(-32, 32)
        contrast_last = rng.random() < 0.5
        alpha = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
        if alpha is not None and not contrast_last:
            img *= alpha
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if rng.random() < 0.5:
            hsv[:, :, 1] *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.5:
            hsv[:, :, 0] += rng.uniform(-18, 18)
            hsv[:, :, 0][hsv[:, :, 0] > 360.0] -= 360.0
            hsv[:, :, 0][hsv[:, :, 0] < 0.0] += 360.0
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        if alpha is not None and contrast_last:
            img *= alpha
        if rng.random() < 0.5:
            img = img[:, :, rng.permutation(3)]
        return img

    def _expand(self, img, boxes, rng):
        if rng.random() >= 0.5:
            return img, boxes
        height, width = img.shape[:2]
        ratio = rng.uniform(1, 4)
        left = int(rng.uniform(0, width * ratio - width))
        top = int(rng.uniform(0, height * ratio - height))
        canvas = np.empty((int(height * ratio), int(width * ratio), 3), dtype=np.float32)
        canvas[:, :, :] = self.mean
        canvas[top:top + height, left:left + width] = img
        return canvas, boxes + np.array([left, top, left, top], dtype=np.float32)

    def _crop(self, img, boxes, labels, rng):
        height, width = img.shape[:2]
        while True:
            min_iou = CROP_MIN_IOUS[rng.integers(len(CROP_MIN_IOUS))]
            if min_iou is None:
                return img, boxes, labels
            for _ in range(CROP_TRIALS):
                w, h = rng.uniform(0.3 * width, width), rng.uniform(0.3 * height, height)
                if h / w < 0.5 or h / w > 2:
                    continue
                left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
                patch = np.array([int(left), int(top), int(left + w), int(top + h)])
                if _iou(boxes, patch).max() < min_iou:
                    continue
                centres = (boxes[:, :2] + boxes[:, 2:]) / 2
                mask = ((centres > patch[:2]) & (centres < patch[2:])).all(axis=1)
                if not mask.any():
                    continue
                out = img[patch[1]:patch[3], patch[0]:patch[2], :].copy()
                kept = boxes[mask].copy()
                kept[:, :2] = np.maximum(kept[:, :2], patch[:2]) - patch[:2]
                kept[:, 2:] = np.minimum(kept[:, 2:], patch[2:]) - patch[:2]
                return out, kept, labels[mask]


def _samples(count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`count` JPEG-decoded 500x375 images with 3 boxes (normalised) and labels."""
    samples = []
    for k in range(count):
        rng = np.random.default_rng([7, k])
        image = render_image(rng, 500)[0][:375]  # [375, 500, 3]
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        corner = rng.uniform(0.0, 0.6, size=(3, 2))
        size = rng.uniform(0.1, 0.4, size=(3, 2))
        boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)  # [3, 4]
        samples.append((decoded, boxes, np.array([1, 5, 9])))
    return samples


def _rate(transform, samples, iterations: int, seed: int) -> float:
    """Images per second of `transform` over `iterations` calls."""
    start = time.perf_counter()
    for i in range(iterations):
        image, boxes, labels = samples[i % len(samples)]
        transform(image, boxes, labels, np.random.default_rng([seed, i]))
    return iterations / (time.perf_counter() - start)


def _loader_rate(dataset, transform, batch: int, count: int, batches: int, rounds: int) -> dict:
    """{"images_per_s", "main_ms_per_batch"} of `count` workers reading `dataset`: each round
    times `batches` batches, or BATCHES_PER_WORKER per worker if more (with many workers a
    short round would time one burst of batches that finish together)."""
    batches = max(batches, BATCHES_PER_WORKER * count)
    stream = iter(make_train_loader(dataset, transform, batch, num_workers=count, seed=0))
    for _ in range(2 + count * PREFETCH_BATCHES_PER_WORKER):  # warm-up: worker start and
        next(stream)  # the batches queued meanwhile (they would inflate the rate)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        rates.append(batches * batch / (time.perf_counter() - start))
    main_ms = []
    for _ in range(rounds if count else 0):
        time.sleep(QUEUE_FILL_SECONDS)
        queued = count * PREFETCH_BATCHES_PER_WORKER
        start = time.perf_counter()
        for _ in range(queued):
            next(stream)
        main_ms.append(1e3 * (time.perf_counter() - start) / queued)
    return {"images_per_s": statistics.median(rates),
            "main_ms_per_batch": statistics.median(main_ms) if main_ms else None}


def loader_rates(workers: list[int], batches: int, rounds: int, batch_size: int | None = None,
                 config: Path = DEMO_CONFIG, overrides: list[str] | None = None) -> dict:
    """{"decoded" | "cached": {workers: {"images_per_s", "main_ms_per_batch"}}} of `config`'s
    training loader, decoding every image as it is read and with data.cache_images."""
    results = {"decoded": {}, "cached": {}}
    with tempfile.TemporaryDirectory() as tmp:
        own = [f"data.root={Path(tmp) / 'shapes'}", f"data.shapes.num_train={LOADER_IMAGES}",
                     "data.shapes.num_test=1"]
        cfg = load_config(config, overrides=own + list(overrides or []))
        transform = build_transform(cfg, train=True)
        batch = batch_size or cfg.solver.batch_size
        for mode, figures in results.items():
            dataset = build_dataset(cfg, train=True)
            if mode == "cached":
                dataset.cache_images(progress=False, size=cached_image_size(transform))
            for count in workers:
                figures[count] = _loader_rate(dataset, transform, batch, count, batches, rounds)
    print(f"make_train_loader, {Path(config).name} augmentation ({cfg.model.image_size} px from "
          f"{cfg.data.shapes.image_size} px JPEGs), batch {batch}, median of {rounds} rounds of "
          f"max({batches}, {BATCHES_PER_WORKER} x workers) batches")
    for mode, figures in results.items():
        what = "images decoded as read" if mode == "decoded" else "data.cache_images"
        for count, figure in figures.items():
            main = figure["main_ms_per_batch"]
            receive = f"; main process receives a queued batch in {main:.1f} ms" if main is not None else ""
            print(f"  {what:22s} {count:2d} workers: {figure['images_per_s']:8.1f} images/s{receive}")
    return results


def run(quick: bool = False, workers: list[int] | None = None, batch_size: int | None = None,
        config: Path = DEMO_CONFIG, overrides: list[str] | None = None) -> dict:
    """Print and return {"augment_images_per_s", "baseline_images_per_s", "ratio", "loader"}."""
    iterations, rounds = (100, 1) if quick else (400, 3)
    samples = _samples(8)
    ours, baseline = SSDAugmentation(SIZE, MEAN), PerOpBaseline(SIZE, MEAN)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        _rate(ours, samples, 20, seed=99), _rate(baseline, samples, 20, seed=99)  # warm up
        ours_rates, base_rates = [], []
        for r in range(rounds):  # interleaved, so load from other processes hits both alike
            ours_rates.append(_rate(ours, samples, iterations, seed=r))
            base_rates.append(_rate(baseline, samples, iterations, seed=r))
    finally:
        cv2.setNumThreads(threads)
    result = {
        "augment_images_per_s": float(np.median(ours_rates)),
        "baseline_images_per_s": float(np.median(base_rates)),
    }
    result["ratio"] = result["augment_images_per_s"] / result["baseline_images_per_s"]
    print(f"SSDAugmentation 500x375 -> {SIZE}, 3 boxes, 1 process, 1 OpenCV thread "
          f"({rounds} x {iterations} images, median)")
    print(f"  augmentation:      {result['augment_images_per_s']:8.1f} images/s "
          f"({1e3 / result['augment_images_per_s']:.2f} ms/image)")
    print(f"  per-op baseline:   {result['baseline_images_per_s']:8.1f} images/s "
          f"({1e3 / result['baseline_images_per_s']:.2f} ms/image)")
    print(f"  ratio:             {result['ratio']:8.2f}x")
    result["loader"] = loader_rates(list(workers or DEFAULT_WORKERS), batches=2 if quick else 4,
                                    rounds=2 if quick else 3, batch_size=batch_size,
                                    config=config, overrides=overrides)
    return result
