"""`predict` section: detection post-processing speed and end-to-end prediction throughput.

Post-processing: ``ssd.postprocess.detect`` on SSD300's 8732 priors x 21 classes, with a score
distribution like a half-trained network (thousands of priors above 0.01 in every class),
against the classic per-class Python-loop NMS (ssd.pytorch's Detect: for each class, threshold,
then a greedy NMS ``while`` loop over the 400 best). Both give the same detections; the target
is a 20x speed-up.

End to end: ``ssd.predictor.Predictor.predict_batch`` on SSD300 (configs/voc300.yaml, random
initialisation) for 500x375 BGR images, from uint8 image to pixel detections, at batch 1 and 8,
in fp32 and in the fast path of the device (bf16 autocast + channels_last on CPUs with native
bf16, fp16 on CUDA), all in the same run. ``run`` returns {"postprocess": ..., "end_to_end": ...}.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import numpy as np
import torch

from benchmarks import best_time
from ssd import defaults
from ssd.box_utils import decode
from ssd.config import load_config
from ssd.modeling import build_model, resolve_priors
from ssd.postprocess import detect
from ssd.precision import default_precision
from ssd.priors import priors_from_config

SETTINGS = dict(score_threshold=defaults.SCORE_THRESHOLD, nms_threshold=defaults.NMS_THRESHOLD,
                top_k=defaults.TOP_K, candidates_per_class=defaults.CANDIDATES_PER_CLASS)
TARGET_RATIO = 20.0


def half_trained_outputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
    """(loc [B, 8732, 4], conf [B, 8732, 21], priors [8732, 4]) of an undecided network.

    Background dominates every prior but not by much (logit +3.5 over N(0, 1.2) foreground
    logits), so about half of the priors pass 0.01 in each of the 20 classes; offsets are
    N(0, 0.5), so neighbouring boxes overlap and NMS has real work.
    """
    cfg = resolve_priors(load_config())  # SSD300: vgg16 at 300 px
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    generator = torch.Generator().manual_seed(seed)
    loc = 0.5 * torch.randn(batch, len(priors), 4, generator=generator)
    conf = 1.2 * torch.randn(batch, len(priors), cfg.model.num_classes, generator=generator)
    conf[..., 0] += 3.5
    return loc, conf, priors


def classic_nms(boxes: torch.Tensor, scores: torch.Tensor, overlap: float,
                candidates: int) -> torch.Tensor:
    """Greedy NMS, one Python iteration per kept box (the baseline). boxes [N, 4] xyxy."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    area = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[-candidates:]  # ascending: the best is last
    keep = []
    while order.numel() > 0:
        best = order[-1]
        keep.append(best)
        order = order[:-1]
        if order.numel() == 0:
            break
        inter_w = (x2[order].clamp(max=x2[best]) - x1[order].clamp(min=x1[best])).clamp(min=0)
        inter_h = (y2[order].clamp(max=y2[best]) - y1[order].clamp(min=y1[best])).clamp(min=0)
        inter = inter_w * inter_h
        iou = inter / (area[order] - inter + area[best])
        order = order[iou <= overlap]
    return torch.stack(keep)


def classic_detect(loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor,
                   score_threshold: float, nms_threshold: float, top_k: int,
                   candidates_per_class: int) -> list[dict[str, torch.Tensor]]:
    """The baseline: per image, per class, threshold and ``classic_nms``; then top_k."""
    probabilities = conf.float().softmax(dim=-1)
    results = []
    for image_loc, image_probabilities in zip(loc.float(), probabilities):
        boxes = decode(image_loc, priors, defaults.VARIANCES)
        kept_scores, kept_boxes, kept_labels = [], [], []
        for label in range(1, conf.shape[-1]):
            scores = image_probabilities[:, label]
            mask = scores > score_threshold
            if not mask.any():
                continue
            keep = classic_nms(boxes[mask], scores[mask], nms_threshold, candidates_per_class)
            kept_scores.append(scores[mask][keep])
            kept_boxes.append(boxes[mask][keep])
            kept_labels.append(torch.full((len(keep),), label - 1))
        scores = torch.cat(kept_scores)
        order = scores.argsort(descending=True)[:top_k]
        results.append({"boxes": torch.cat(kept_boxes)[order], "scores": scores[order],
                        "labels": torch.cat(kept_labels)[order]})
    return results



def _same_detections(a: list[dict], b: list[dict]) -> bool:
    return all(
        x["labels"].equal(y["labels"]) and torch.allclose(x["scores"], y["scores"])
        and torch.allclose(x["boxes"], y["boxes"], atol=1e-6)
        for x, y in zip(a, b)
    )


@contextlib.contextmanager
def _threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def postprocess_benchmark(quick: bool) -> dict:
    """Time ``detect`` against ``classic_detect`` at batch 1 (and detect alone at batch 8).

    The comparison runs on one thread: both are dominated by small sequential operations,
    and on a shared machine multi-threaded small ops make timings erratic. ``detect`` is also
    timed with torch's default thread count.
    """
    loc, conf, priors = half_trained_outputs(batch=1)
    passing = (conf.softmax(dim=-1)[0, :, 1:] > SETTINGS["score_threshold"]).sum(dim=0)
    print(f"post-processing: {len(priors)} priors x {conf.shape[-1]} classes; priors above "
          f"{SETTINGS['score_threshold']} per class: {int(passing.min())}-{int(passing.max())}")
    default_threads = torch.get_num_threads()
    fast_default, _ = best_time(lambda: detect(loc, conf, priors, **SETTINGS),
                                 5 if quick else 20)
    with _threads(1):
        fast, fast_result = best_time(lambda: detect(loc, conf, priors, **SETTINGS),
                                       5 if quick else 20)
        slow, slow_result = best_time(lambda: classic_detect(loc, conf, priors, **SETTINGS),
                                       1 if quick else 3)
    same = _same_detections(fast_result, slow_result)
    ratio = slow / fast
    print(f"detect: {fast * 1e3:.1f} ms/image (1 thread), {fast_default * 1e3:.1f} ms/image "
          f"({default_threads} threads)")
    print(f"classic per-class loop NMS: {slow * 1e3:.0f} ms/image (1 thread)")
    print(f"speed-up {ratio:.0f}x (target >= {TARGET_RATIO:.0f}x: "
          f"{'yes' if ratio >= TARGET_RATIO else 'NO'}); same detections: "
          f"{'yes' if same else 'NO'}")
    loc8, conf8, _ = half_trained_outputs(batch=8, seed=1)
    with _threads(1):
        batched, _ = best_time(lambda: detect(loc8, conf8, priors, **SETTINGS),
                                1 if quick else 5)
    print(f"detect at batch 8: {batched / 8 * 1e3:.1f} ms/image (1 thread)")
    return {"detect_ms": fast * 1e3, "detect_default_threads_ms": fast_default * 1e3,
            "classic_ms": slow * 1e3, "ratio": ratio, "same_detections": same,
            "detect_batch8_ms_per_image": batched / 8 * 1e3,
            "detections": len(fast_result[0]["scores"])}


def end_to_end_benchmark(quick: bool, device: str = "cpu") -> dict:
    """Images/s of ``Predictor.predict_batch`` for SSD300 at batch 1 and 8, fp32 vs fast path.

    Each precision gets its own copy of one randomly initialised model (the fast path makes
    its copy channels_last). Timed on one thread and on torch's default thread count: on a
    shared machine, threads that wait for each other make the multi-threaded figures erratic
    (the best of the repeats counts).
    """
    from ssd.predictor import Predictor

    cfg = load_config()
    torch.manual_seed(0)
    model = build_model(cfg)
    fast = default_precision(device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8) for _ in range(8)]
    repeats = {1: 2 if quick else 5, 8: 1 if quick else 3}
    predictors = {precision: Predictor(copy.deepcopy(model), config=cfg, device=device,
                                       precision=precision, batch_size=8)
                  for precision in dict.fromkeys(["fp32", fast])}
    print(f"end to end (SSD300 {cfg.model.image_size}px from 500x375 images, {device}): fast path "
          f"= {fast}{' + channels_last' if fast != 'fp32' else ' (no faster precision here)'}")
    results = {}
    for threads in sorted({1, torch.get_num_threads()}):
        per_second: dict[str, dict[int, float]] = {precision: {} for precision in predictors}
        with _threads(threads):
            for batch, count in repeats.items():
                for precision, predictor in predictors.items():
                    call = functools.partial(predictor.predict_batch, images[:batch])
                    per_second[precision][batch] = batch / best_time(call, count)[0]
        for batch in repeats:
            base, quick_path = per_second["fp32"][batch], per_second[fast][batch]
            print(f"  {threads} thread{'s' if threads > 1 else ''}, batch {batch}: fp32 "
                  f"{base:.2f} images/s, {fast} {quick_path:.2f} images/s, ratio "
                  f"{quick_path / base:.2f}x")
        results[f"{threads}_threads"] = {
            "images_per_second": {p: {str(b): v for b, v in r.items()} for p, r in per_second.items()},
            "ratio": {str(b): per_second[fast][b] / per_second["fp32"][b] for b in repeats},
        }
    return {"fast_precision": fast, **results}


def run(quick: bool) -> dict:
    return {"postprocess": postprocess_benchmark(quick), "end_to_end": end_to_end_benchmark(quick)}
