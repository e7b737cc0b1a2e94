"""Batched inference over a data set and its evaluation (VOC07 / VOC10 / COCO metrics)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ssd.postprocess import detect
from ssd.precision import autocast_context, uses_channels_last


@torch.inference_mode()
def predict_batches(
    model: nn.Module,
    loader,
    device,
    precision: str = "fp32",
    conf_threshold: float = 0.01,
    nms_threshold: float = 0.45,
    top_k: int = 200,
    candidates_per_class: int = 400,
    variances=(0.1, 0.2),
    progress: bool = True,
) -> dict[int, dict[str, np.ndarray]]:
    """Detections for every sample of `loader` (batches of (images, targets, indices)).

    Returns:
        {dataset index: {"boxes": float ndarray[K, 4] xyxy normalised, "scores": [K],
                         "labels": int ndarray[K] 0-based}}
    """
    device = torch.device(device)
    channels_last = uses_channels_last(precision)
    results: dict[int, dict[str, np.ndarray]] = {}
    for images, _targets, indices in tqdm(loader, desc="inference", unit="batch",
                                          disable=not progress, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            loc, conf = model(images)
        detections = detect(
            loc.float(), conf.float(), model.priors, conf_threshold=conf_threshold,
            nms_threshold=nms_threshold, top_k=top_k, candidates_per_class=candidates_per_class,
            variances=variances,
        )
        for index, found in zip(indices.tolist(), detections):
            results[index] = {key: value.cpu().numpy() for key, value in found.items()}
    return results


def ground_truth_pixels(dataset) -> dict[str, dict[str, np.ndarray]]:
    """Ground truth of every image in the frame of the normalised targets times width/height:
    annotation value - dataset.coordinate_origin (VOC XML is 1-based, COCO 0-based).
    Keyed by image id."""
    origin = float(getattr(dataset, "coordinate_origin", 1.0))
    gt = {}
    for index in range(len(dataset)):
        ann = dataset.get_annotation(index)
        gt[ann["image_id"]] = {
            "boxes": np.asarray(ann["boxes"], dtype=np.float64).reshape(-1, 4) - origin,
            "labels": np.asarray(ann["labels"], dtype=np.int64),
            "difficult": np.asarray(ann["difficult"], dtype=bool),
        }
    return gt


def detections_to_pixels(dataset, detections: dict[int, dict[str, np.ndarray]]):
    """Normalised detections keyed by dataset index -> 0-based pixel boxes keyed by image id."""
    out = {}
    for index, found in detections.items():
        ann = dataset.get_annotation(index)
        scale = np.array([ann["width"], ann["height"]] * 2, dtype=np.float64)
        out[ann["image_id"]] = {
            "boxes": found["boxes"].astype(np.float64) * scale,
            "scores": found["scores"].astype(np.float64),
            "labels": found["labels"].astype(np.int64),
        }
    return out


def evaluate_detections(dataset, detections, metric: str = "voc07") -> dict[str, Any]:
    """Score detections (keyed by dataset index, normalised) with the VOC or COCO metric.

    Returns a dict with at least "mAP" (COCO: AP@[.5:.95]) and "ap" (per class for VOC).
    """
    from ssd.evaluation import coco_evaluate, voc_evaluate

    pixel_dets = detections_to_pixels(dataset, detections)
    if metric == "coco":
        coco_dets = {dataset.get_annotation(i)["image_id"]: pixel_dets[
            dataset.get_annotation(i)["image_id"]] for i in detections}
        stats = coco_evaluate(dataset.coco, coco_dets, dataset.label_to_category_id)
        return {"mAP": stats["AP"], "coco": stats, "ap": {}}
    gt = ground_truth_pixels(dataset)
    return voc_evaluate(gt, pixel_dets, list(dataset.class_names), iou_threshold=0.5,
                        use_07_metric=(metric == "voc07"))


def evaluate_model(model, dataset, loader, device, test_cfg, variances, precision="fp32",
                   progress=True) -> dict[str, Any]:
    """Inference over `loader` then `evaluate_detections`; adds timing to the result."""
    start = time.perf_counter()
    detections = predict_batches(
        model, loader, device, precision=precision, conf_threshold=test_cfg.conf_threshold,
        nms_threshold=test_cfg.nms_threshold, top_k=test_cfg.top_k,
        candidates_per_class=test_cfg.candidates_per_class, variances=variances,
        progress=progress,
    )
    inference_seconds = time.perf_counter() - start
    result = evaluate_detections(dataset, detections, metric=test_cfg.metric)
    result["detections"] = detections
    result["timing"] = {
        "inference_seconds": inference_seconds,
        "metric_seconds": time.perf_counter() - start - inference_seconds,
        "images": len(detections),
        "images_per_second": len(detections) / max(inference_seconds, 1e-9),
    }
    return result
