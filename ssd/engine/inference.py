"""A model scored on a data set: the evaluation loader, batched inference, then the metric.

    from ssd.engine.inference import evaluate_model, make_eval_loader
    loader = make_eval_loader(dataset, build_transform(cfg, train=False), batch_size=32)
    result = evaluate_model(model, dataset, loader, device, build_postprocessor(cfg), "voc07")
    result["mAP"], result["ap"], result["skipped"], result["timing"]["images_per_second"]

Work is split where it runs fastest: loader workers decode, resize and normalise the images;
the model and the post-processing (decode, softmax, NMS) run batched on the device; one copy
per batch brings the detections back; the metric runs on the CPU over the whole data set.

Skipped images: a data set read with ``data.skip_bad`` would hand an unreadable image to
training as a black image without objects. Evaluation instead leaves it out entirely: the
loader yields no sample for it but a ``SkippedImage`` naming the file, and ground truth is
built only for the images that were evaluated, so a skipped image counts neither as missed
objects nor as an image without detections.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssd.data.loader import LoadFailure, TransformedDataset, data_loader
from ssd.evaluation.dataset_eval import check_has_images, evaluate_detections, match_classes
from ssd.postprocess import PostProcessor
from ssd.precision import autocast_context, uses_channels_last
from ssd.progress import progress_bar


class SkippedImage(NamedTuple):
    """An image left out of the evaluation because it could not be read (data.skip_bad)."""

    index: int  # data set index
    path: str  # the image file
    message: str  # the reader's error, which names the file


class EvalBatch(NamedTuple):
    """One batch of the evaluation loader.

    images: Tensor[B, 3, S, S] float32 (None when every image of the batch was skipped);
    indices: LongTensor[B] data set index of each image; skipped: the images of this batch
    that could not be read.
    """

    images: torch.Tensor | None
    indices: torch.Tensor
    skipped: list[SkippedImage]


class Predictions(NamedTuple):
    """Output of ``predict_batches``.

    detections: ``{data set index: {"boxes": float32 ndarray[K, 4] xyxy normalised,
    "scores": [K], "labels": int64 [K] 0-based}}`` for every evaluated image;
    skipped: the images left out, in data set order.
    """

    detections: dict[int, dict[str, np.ndarray]]
    skipped: list[SkippedImage]


class _EvaluationSamples(Dataset):
    """``TransformedDataset`` samples, or a ``SkippedImage`` where the image cannot be read and
    the data set skips bad files (a strict copy of the data set reads, so the error surfaces
    here instead of becoming a black image)."""

    def __init__(self, dataset, transform: Callable):
        self.skip_bad = bool(getattr(dataset, "skip_bad", False))
        strict = copy.copy(dataset)  # shallow: shares the parsed records
        if self.skip_bad:
            strict.skip_bad = False
        self.samples = TransformedDataset(strict, transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        if isinstance(sample, LoadFailure) and self.skip_bad:
            return SkippedImage(int(index), sample.path, sample.message)
        return sample


def _collate(items: Sequence) -> EvalBatch | LoadFailure:
    """(image [3, S, S], target, index) samples and SkippedImage markers -> one EvalBatch; a
    batch holding an image that could not be read (not skipped) -> its LoadFailure, which
    `predict_batches` raises in the main process with the file's own message."""
    failure = next((item for item in items if isinstance(item, LoadFailure)), None)
    if failure is not None:
        return failure
    samples = [item for item in items if not isinstance(item, SkippedImage)]
    skipped = [item for item in items if isinstance(item, SkippedImage)]
    images = torch.stack([sample[0] for sample in samples]) if samples else None  # [B, 3, S, S]
    indices = torch.tensor([sample[2] for sample in samples], dtype=torch.long)
    return EvalBatch(images, indices, skipped)


def make_eval_loader(dataset, transform: Callable, batch_size: int, num_workers: int | str | None = 0,
                     pin_memory: bool = False) -> DataLoader:
    """One ordered pass over `dataset` for evaluation; images are read, resized and normalised
    in the `num_workers` worker processes ("auto" or None: `auto_num_workers()`).

    Yields:
        EvalBatch(images [B, 3, S, S] float32 or None, indices LongTensor[B], skipped list):
        every index 0 .. len(dataset) - 1 appears once, in ``indices`` or in ``skipped``.
    """
    return data_loader(_EvaluationSamples(dataset, transform), batch_size, num_workers, pin_memory,
                       collate_fn=_collate, loader_class=DataLoader)


@torch.inference_mode()
def predict_batches(
    model: nn.Module,
    loader,
    device,
    postprocess: PostProcessor,
    precision: str = "fp32",
    progress: bool = True,
) -> Predictions:
    """Detections for every image `loader` yields, post-processed on `device`.

    Args:
        model: an SSD in eval mode on `device` (returns loc [B, P, 4], conf [B, P, C]; has
            ``priors`` [P, 4]).
        loader: ``make_eval_loader`` batches; (images, targets, indices) batches of
            ``ssd.data.make_test_loader`` work too (they skip nothing).
        postprocess: the detection settings, e.g. ``build_postprocessor(cfg)``.
        precision: "fp32" (default, the reference numbers), "bf16" or "fp16" autocast.

    Returns:
        Predictions(detections keyed by data set index, boxes normalised; skipped images).
    """
    device = torch.device(device)
    channels_last = uses_channels_last(precision)
    detections: dict[int, dict[str, np.ndarray]] = {}
    skipped: list[SkippedImage] = []
    for batch in progress_bar(loader, desc="inference", unit="batch", enabled=progress):
        if isinstance(batch, LoadFailure):
            raise batch.error()
        images, indices, batch_skipped = _as_eval_batch(batch)
        skipped.extend(batch_skipped)
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            loc, conf = model(images)
        found = postprocess(loc, conf, model.priors)  # on the device, in float32
        detections.update(zip(indices.tolist(), _to_numpy(found)))
    return Predictions(detections, sorted(skipped))


def _as_eval_batch(batch) -> EvalBatch:
    """An EvalBatch, or a make_test_loader batch (images, targets, indices) as one."""
    if isinstance(batch, EvalBatch):
        return batch
    images, _targets, indices = batch
    return EvalBatch(images, indices, [])


def _to_numpy(found: list[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    """Per-image detection tensors -> ndarrays, with one device-to-host copy per field for the
    whole batch (not one per image)."""
    counts = [len(image["scores"]) for image in found]
    split_at = np.cumsum(counts)[:-1]
    fields = {key: np.split(torch.cat([image[key] for image in found]).cpu().numpy(), split_at)
              for key in ("boxes", "scores", "labels")}
    return [{key: fields[key][i] for key in fields} for i in range(len(found))]


def evaluate_model(
    model: nn.Module,
    dataset,
    loader,
    device,
    postprocess: PostProcessor,
    metric: str = "voc07",
    precision: str = "fp32",
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``predict_batches`` over `loader` (of `dataset`), then ``evaluate_detections``.

    Args:
        class_names: the model's foreground class names in label order, scored as the data
            set's classes of the same names (see ``match_classes``); None: the model's labels
            are the data set's.

    Raises ValueError naming the split file when `dataset` has no images, or when the model's
    and the data set's classes cannot be matched.

    Returns:
        The metric's result plus "detections" (keyed by data set index, in data set labels),
        "skipped" (list of SkippedImage) and "timing" (inference and metric seconds, images,
        images per second).
    """
    check_has_images(dataset)
    if class_names is not None:  # before the inference: a mismatch stops at once
        match_classes(class_names, dataset.class_names, metric)
    start = time.perf_counter()
    predictions = predict_batches(model, loader, device, postprocess, precision=precision,
                                  progress=progress)
    inference_seconds = time.perf_counter() - start
    result = evaluate_detections(dataset, predictions.detections, metric=metric,
                                 model_classes=class_names)
    result["skipped"] = predictions.skipped
    images = len(predictions.detections)
    result["timing"] = {
        "inference_seconds": inference_seconds,
        "metric_seconds": time.perf_counter() - start - inference_seconds,
        "images": images,
        "images_per_second": images / inference_seconds if inference_seconds > 0 else float("nan"),
    }
    return result
