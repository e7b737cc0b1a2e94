"""Benchmark section `postprocess`: ``ssd.postprocess.detect`` forms against the previous one.

What is timed: one ``detect`` call (decode, softmax, per-class candidates, NMS, top-k, split
into per-image dicts) on SSD300-sized outputs, loc [B, 8732, 4] and conf [B, 8732, 21] in
float32, already on the device, with the default settings (threshold 0.01, NMS 0.45, 400
candidates per class, top 200). Three forms in the same run, alternating within each round:
the previous implementation (``previous_detect``: per-image ``torchvision.ops.batched_nms``),
``detect(method="loop")`` and ``detect(method="batched")``. Median of the rounds after a
warm-up call; on CUDA every timed call ends with ``torch.cuda.synchronize``. Two score
distributions: "random" (logits N(0, 3)) and "half_trained" (background +3.5 over N(0, 1.2)
foreground logits: about half of the priors pass 0.01 in every class, so every class has 400
candidates). Then the SSD300 forward pass at the same batch size, in the device's fast
inference precision, and the ratio of the default form's post-processing (half-trained
scores) to it. Requirements: at batch 32 on CPU, detect's default form at least as fast as the
previous implementation; on a GPU, post-processing of batch 32 no slower than the fp16 forward.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from benchmarks import make_forward, median_times
from ssd import defaults
from ssd.box_utils import decode
from ssd.config import load_config
from ssd.modeling import resolve_priors
from ssd.postprocess import detect, nms_method
from ssd.precision import default_precision, precision_label
from ssd.priors import priors_from_config

SETTINGS = dict(score_threshold=defaults.SCORE_THRESHOLD, nms_threshold=defaults.NMS_THRESHOLD,
                top_k=defaults.TOP_K, candidates_per_class=defaults.CANDIDATES_PER_CLASS)
DISTRIBUTIONS = ("random", "half_trained")
BATCH = 32


def make_outputs(batch: int, distribution: str, seed: int = 0):
    """(loc [B, 8732, 4], conf [B, 8732, 21], priors [8732, 4]) of SSD300, on the CPU."""
    cfg = resolve_priors(load_config())  # SSD300: vgg16 at 300 px
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    generator = torch.Generator().manual_seed(seed)
    loc = 0.5 * torch.randn(batch, len(priors), 4, generator=generator)
    conf = torch.randn(batch, len(priors), cfg.model.num_classes, generator=generator)
    if distribution == "random":
        return loc, 3.0 * conf, priors
    conf = 1.2 * conf
    conf[..., 0] += 3.5
    return loc, conf, priors


def previous_detect(loc, conf, priors, score_threshold, nms_threshold, top_k, candidates_per_class):
    """The implementation ``detect`` replaced: batched candidates, then per image one
    ``batched_nms`` over its classes (a host synchronisation for the per-image counts)."""
    batch = conf.shape[0]
    boxes = decode(loc.float(), priors.float(), defaults.VARIANCES)  # [B, P, 4]
    scores = conf.float().softmax(dim=-1)[..., 1:].transpose(1, 2)  # [B, C-1, P]
    limit = min(candidates_per_class, scores.shape[-1])
    top_scores, top_priors = scores.topk(limit, dim=-1, sorted=True)  # [B, C-1, k]
    image, label, rank = torch.nonzero(top_scores > score_threshold, as_tuple=True)
    candidate_boxes = boxes[image, top_priors[image, label, rank]]  # [N, 4]
    score = top_scores[image, label, rank]  # [N]
    counts = torch.bincount(image, minlength=batch).tolist()
    results = []
    for image_boxes, image_scores, image_labels in zip(
            candidate_boxes.split(counts), score.split(counts), label.split(counts)):
        keep = batched_nms(image_boxes, image_scores, image_labels, nms_threshold)[:top_k]
        results.append({"boxes": image_boxes[keep], "scores": image_scores[keep],
                        "labels": image_labels[keep]})
    return results


def _by_score_then_label(result: dict) -> dict:
    """The detections reordered by decreasing score, equal scores by increasing label (the
    order ``detect`` defines; the previous form left equal scores in any order)."""
    order = result["labels"].argsort(stable=True)
    order = order[result["scores"][order].argsort(descending=True, stable=True)]
    return {key: value[order] for key, value in result.items()}


def _same(a: list[dict], b: list[dict], exact: bool) -> bool:
    if exact:
        return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    a, b = [_by_score_then_label(x) for x in a], [_by_score_then_label(y) for y in b]
    return all(torch.equal(x["labels"], y["labels"]) and torch.allclose(x["scores"], y["scores"])
               and torch.allclose(x["boxes"], y["boxes"]) for x, y in zip(a, b))


def _compare(batch: int, distribution: str, device: torch.device, repeats: int,
             default: str) -> dict:
    """Median times of the three forms on one input, whether they agree, and a printed line."""
    loc, conf, priors = (t.to(device) for t in make_outputs(batch, distribution))
    calls = {
        "previous": lambda: previous_detect(loc, conf, priors, **SETTINGS),
        "loop": lambda: detect(loc, conf, priors, **SETTINGS, method="loop"),
        "batched": lambda: detect(loc, conf, priors, **SETTINGS, method="batched"),
    }
    medians = median_times(calls, repeats, device)
    results = {name: call() for name, call in calls.items()}
    same = (_same(results["loop"], results["batched"], exact=True)
            and _same(results["loop"], results["previous"], exact=False))
    ratio = medians["previous"] / medians[default]
    print(f"  batch {batch:3d} {distribution:12s} previous {medians['previous'] * 1e3:8.1f} ms"
          f"  loop {medians['loop'] * 1e3:8.1f} ms  batched {medians['batched'] * 1e3:8.1f} ms"
          f"  previous/{default} {ratio:5.2f}x  same detections: {'yes' if same else 'NO'}")
    return {**{f"{name}_ms": round(value * 1e3, 2) for name, value in medians.items()},
            "speedup_of_default": round(ratio, 2), "same_detections": same}


def forward_seconds(batch: int, device: torch.device, repeats: int) -> tuple[float, str]:
    """(median seconds, precision) of the SSD300 VGG16 forward pass on [batch, 3, 300, 300]:
    random weights, in the device's fast inference precision (`default_precision`: fp16 on
    CUDA, bf16 on CPUs that have it in hardware, else fp32), channels_last where that pays."""
    cfg = load_config(overrides=["model.pretrained=null"])
    precision = default_precision(device)
    forward = make_forward(cfg, device, batch, precision)
    return median_times({"forward": forward}, repeats, device)["forward"], precision


def run(quick: bool = False, device: str = "cpu", batch_size: int = BATCH) -> dict:
    """Time the three forms at batch 1 and `batch_size` for each distribution and print them,
    then the SSD300 forward pass at `batch_size` and the ratio of post-processing to it."""
    device = torch.device(device)
    default = nms_method("auto", device, SETTINGS["candidates_per_class"])
    print(f"post-processing, fp32, {device} ({torch.get_num_threads()} threads), SSD300 8732 "
          f"priors x 21 classes; detect's default form here: {default}")
    figures = {"device": str(device), "precision": "fp32", "default_method": default}
    for batch in sorted({1, batch_size}):
        repeats = (3 if quick else 7) if batch > 8 else (5 if quick else 15)
        for distribution in DISTRIBUTIONS:
            figures[f"batch{batch}_{distribution}"] = _compare(batch, distribution, device,
                                                               repeats, default)
    forward, precision = forward_seconds(batch_size, device, repeats=2 if quick else 3)
    post_ms = figures[f"batch{batch_size}_half_trained"][f"{default}_ms"]
    figures["forward"] = {"batch": batch_size, "precision": precision, "ms": round(forward * 1e3, 2),
                          "postprocess_over_forward": round(post_ms / (forward * 1e3), 3)}
    print(f"  SSD300 forward, batch {batch_size}, {precision_label(precision)}: "
          f"{forward * 1e3:.1f} ms; post-processing ({default}, half_trained) / forward: "
          f"{figures['forward']['postprocess_over_forward']:.3f}")
    return figures
