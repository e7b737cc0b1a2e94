"""Do the priors cover the objects? Each ground-truth box's best prior IoU and positive priors,
from the matching code of training, and a search for prior settings that cover more boxes.

    coverage = prior_coverage(boxes_per_image, priors, iou_threshold=0.5)
    coverage.best_iou        # Tensor[N]: each box's highest IoU with any prior
    coverage.positives       # Tensor[N]: the priors `match` makes positive for it
    fraction = covered_fraction(coverage.best_iou, 0.5)
    fit = fit_prior_settings(shapes, settings, image_size, iou_threshold=0.5)

A box whose best prior IoU is below the matching threshold is matched only through the forced
best-prior rule of `ssd.box_utils.match`: one positive prior, at a poor overlap. Boxes are
normalised xyxy as the loss takes them (the image resized to the network's square input), so
aspect ratios here are those of the resized image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ssd.box_utils import match, pad_targets, prior_geometry, prior_iou
from ssd.priors import default_boxes

# IoU tensors are computed in chunks of about this many [boxes, priors] entries (~64 MB float32).
CHUNK_ELEMENTS = 16_000_000
# Size buckets by sqrt(box area) in pixels of the network input: COCO's small / medium / large
# limits (32 and 96 pixels).
SIZE_BUCKET_LIMITS = (("small", 32.0), ("medium", 96.0), ("large", math.inf))
# The prior search: the factors each min and max size is tried at, the aspect ratios each
# ratio slot is tried with, the most passes over all settings, and the most boxes it scores
# (a fixed random sample of a larger set; the reported coverage always uses every box).
SIZE_FACTORS = (0.7, 0.85, 1.2, 1.4)
ASPECT_CANDIDATES = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
MAX_FIT_PASSES = 3
MAX_FIT_BOXES = 4000
FIT_SAMPLE_SEED = 0


@dataclass
class Coverage:
    """Per ground-truth box, in the order of the boxes given: best_iou [N] float (highest IoU
    with any prior) and positives [N] long (priors `match` assigns to it, forced one included)."""

    best_iou: torch.Tensor
    positives: torch.Tensor


def best_prior_iou(boxes: torch.Tensor, priors_cxcywh: torch.Tensor) -> torch.Tensor:
    """Each box's highest IoU with any prior: boxes [N, 4] normalised xyxy -> [N].

    Uses `prior_iou` on the priors' `prior_geometry`, the IoU `match` computes (bit for bit
    `pairwise_iou`), in chunks of about CHUNK_ELEMENTS entries.
    """
    priors_xyxy, intervals = prior_geometry(priors_cxcywh)
    rows = max(1, CHUNK_ELEMENTS // max(len(priors_xyxy), 1))
    best = [prior_iou(part, priors_xyxy, intervals).amax(dim=1) for part in boxes.split(rows)]
    return torch.cat(best) if best else torch.zeros(0)


def positive_priors(boxes_per_image: Sequence[torch.Tensor], priors_cxcywh: torch.Tensor,
                    iou_threshold: float) -> torch.Tensor:
    """Positive priors per box as training assigns them: `match` on every image (all its
    boxes competing for the priors), then the priors each box wins are counted.

    Args:
        boxes_per_image: per image, Tensor[n_i, 4] normalised xyxy.
        priors_cxcywh: [P, 4].
        iou_threshold: the matching threshold (loss.iou_threshold).

    Returns:
        [N] long, N = sum of n_i, the boxes in image order.
    """
    if not boxes_per_image:
        return torch.zeros(0, dtype=torch.long)
    # pad_targets packs (box, label) rows; the label column is not needed here
    targets = [torch.nn.functional.pad(boxes.float().reshape(-1, 4), (0, 1)) for boxes in boxes_per_image]
    padded, valid = pad_targets(targets)  # [B, n, 5], [B, n]
    padded = padded[..., :4]
    matched_index, positive, _ = match(padded, valid, priors_cxcywh, iou_threshold,
                                       chunk_elements=CHUNK_ELEMENTS)  # [B, P] each
    rows = padded.shape[1]
    image = torch.arange(len(boxes_per_image))[:, None].expand_as(matched_index)  # [B, P]
    owner = (image * rows + matched_index)[positive]  # flat [B * n] index of each positive's box
    counts = torch.bincount(owner, minlength=len(boxes_per_image) * rows).view(-1, rows)
    return counts[valid]


def prior_coverage(boxes_per_image: Sequence[torch.Tensor], priors_cxcywh: torch.Tensor,
                   iou_threshold: float) -> Coverage:
    """`best_prior_iou` and `positive_priors` of every box of every image (image order)."""
    flat = torch.cat([b.float().reshape(-1, 4) for b in boxes_per_image]) if boxes_per_image \
        else torch.zeros(0, 4)
    return Coverage(best_prior_iou(flat, priors_cxcywh),
                    positive_priors(boxes_per_image, priors_cxcywh, iou_threshold))


def covered_fraction(best_iou: torch.Tensor, iou_threshold: float) -> float:
    """Share of boxes whose best prior IoU reaches `iou_threshold` (NaN without boxes)."""
    return float((best_iou >= iou_threshold).float().mean()) if len(best_iou) else math.nan


def size_buckets(boxes: torch.Tensor, image_size: int) -> list[str]:
    """The SIZE_BUCKET_LIMITS name of each normalised xyxy box [N, 4] at the network input."""
    side = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1).sqrt() * image_size  # [N]
    names = []
    for value in side.tolist():
        names.append(next(name for name, limit in SIZE_BUCKET_LIMITS if value < limit))
    return names


def coverage_summary(coverage: Coverage, groups: Sequence[str], iou_threshold: float) -> dict:
    """{"boxes", "covered", "mean_best_iou", "mean_positive_priors"} of all boxes and of each
    group (e.g. class or size bucket; `groups[i]` names box i's)."""
    def summary(index: torch.Tensor) -> dict[str, Any]:
        best, positives = coverage.best_iou[index], coverage.positives[index]
        count = len(best)
        return {"boxes": count, "covered": covered_fraction(best, iou_threshold),
                "mean_best_iou": float(best.mean()) if count else math.nan,
                "mean_positive_priors": float(positives.float().mean()) if count else math.nan}

    result = summary(torch.arange(len(coverage.best_iou)))
    by_group: dict[str, list[int]] = {}
    for index, name in enumerate(groups):
        by_group.setdefault(name, []).append(index)
    result["groups"] = {name: summary(torch.tensor(rows)) for name, rows in by_group.items()}
    return result


# ----------------------------------------------------------------------------- fitting
@dataclass
class PriorFit:
    """What `fit_prior_settings` found: the settings to use (the given ones when the search
    found nothing better) and the coverage of every box before and after."""

    settings: dict[str, Any]
    before: float
    after: float
    improved: bool


def priors_of(settings: Mapping[str, Any], image_size: int) -> torch.Tensor:
    """`default_boxes` [P, 4] (cx, cy, w, h) of a complete model.priors settings dict."""
    return default_boxes(settings["feature_maps"], image_size, settings["steps"],
                         settings["min_sizes"], settings["max_sizes"], settings["aspect_ratios"],
                         clip=settings.get("clip", True))


def fit_prior_settings(boxes: torch.Tensor, settings: Mapping[str, Any], image_size: int,
                       iou_threshold: float) -> PriorFit:
    """Search min sizes, max sizes and aspect ratios of every feature map for more boxes whose
    best prior IoU reaches `iou_threshold`.

    Greedy coordinate search: each map's min and max size is tried at SIZE_FACTORS times its
    value (a max size stays above the min size), each aspect ratio slot with every
    ASPECT_CANDIDATES value; a change is kept when it raises the coverage of the (sampled)
    boxes, for at most MAX_FIT_PASSES passes. The feature maps, steps and the number of ratios
    per map stay as they are, so the model's heads keep their shapes.

    Args:
        boxes: [N, 4] normalised xyxy training boxes.
        settings: complete model.priors settings (no null keys).
        image_size: model.image_size.
        iou_threshold: the matching threshold.

    Returns:
        PriorFit; `after` and `before` are `covered_fraction` of `best_prior_iou` over all
        boxes, and `settings` are the given ones unless `after` > `before`.
    """
    current = _copy_settings(settings)
    sample = _fit_sample(boxes)
    score = _score(sample, current, image_size, iou_threshold)
    for _ in range(MAX_FIT_PASSES):
        changed = False
        for options in _option_groups(len(current["feature_maps"]), current["aspect_ratios"]):
            scored = [(_score(sample, option, image_size, iou_threshold), option)
                      for option in options(current)]
            best_score, best_option = max(scored, key=lambda item: item[0], default=(score, None))
            if best_score > score:  # the best value of this setting, when it beats the current
                current, score, changed = best_option, best_score, True
        if not changed:
            break
    before = covered_fraction(best_prior_iou(boxes, priors_of(settings, image_size)), iou_threshold)
    after = covered_fraction(best_prior_iou(boxes, priors_of(current, image_size)), iou_threshold)
    if not after > before:  # never propose priors that cover fewer boxes
        return PriorFit(_copy_settings(settings), before, before, improved=False)
    return PriorFit(current, before, after, improved=True)


def _copy_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: [list(v) for v in value] if key == "aspect_ratios" else
            (list(value) if isinstance(value, (list, tuple)) else value)
            for key, value in settings.items()}


def _fit_sample(boxes: torch.Tensor) -> torch.Tensor:
    """At most MAX_FIT_BOXES of `boxes` [N, 4], a fixed random sample."""
    if len(boxes) <= MAX_FIT_BOXES:
        return boxes
    generator = torch.Generator().manual_seed(FIT_SAMPLE_SEED)
    return boxes[torch.randperm(len(boxes), generator=generator)[:MAX_FIT_BOXES]]


def _score(boxes: torch.Tensor, settings: Mapping[str, Any], image_size: int,
           iou_threshold: float) -> tuple[float, float]:
    """(covered fraction, mean best IoU): the second breaks ties between equal fractions."""
    best = best_prior_iou(boxes, priors_of(settings, image_size))
    return covered_fraction(best, iou_threshold), float(best.mean())


def _option_groups(num_maps: int, aspect_ratios: Sequence[Sequence[float]]):
    """One function per setting (a map's min size, its max size, one of its ratio slots) that
    gives the settings differing from its argument in that setting alone."""
    for index in range(num_maps):
        yield lambda settings, index=index: _size_options(settings, "min_sizes", index)
        yield lambda settings, index=index: _size_options(settings, "max_sizes", index)
        for slot in range(len(aspect_ratios[index])):
            yield lambda settings, index=index, slot=slot: _ratio_options(settings, index, slot)


def _size_options(settings: dict[str, Any], key: str, index: int) -> list[dict[str, Any]]:
    """`settings` with settings[key][index] times each SIZE_FACTORS (min size < max size)."""
    low, high = settings["min_sizes"][index], settings["max_sizes"][index]
    options = []
    for factor in SIZE_FACTORS:
        value = round(settings[key][index] * factor, 2)
        if (value < high) if key == "min_sizes" else (value > low):
            options.append(_with(settings, key, index, value))
    return options


def _ratio_options(settings: dict[str, Any], index: int, slot: int) -> list[dict[str, Any]]:
    """`settings` with aspect ratio `slot` of map `index` set to each ASPECT_CANDIDATES value
    the map does not have yet (the map's ratios kept sorted)."""
    ratios = settings["aspect_ratios"][index]
    options = []
    for ratio in ASPECT_CANDIDATES:
        if ratio not in ratios:
            changed = list(ratios)
            changed[slot] = ratio
            options.append(_with(settings, "aspect_ratios", index, sorted(changed)))
    return options


def _with(settings: dict[str, Any], key: str, index: int, value: Any) -> dict[str, Any]:
    """A copy of `settings` with settings[key][index] = value."""
    copy = _copy_settings(settings)
    copy[key][index] = value
    return copy
