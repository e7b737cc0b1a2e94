"""Detection post-processing: decode + softmax + per-class threshold + NMS + top-k.

    dets = detect(loc, conf, priors)          # list (per image) of dicts, boxes normalised
    post = build_postprocessor(cfg)           # the same with the settings of cfg.test
    pixels = scale_boxes(dets[0]["boxes"], width, height)

Decoding, softmax, thresholding, the per-class candidate selection and the final per-image
top-k run for the whole batch at once. Greedy NMS has two forms with identical results:

* "loop": one ``torchvision.ops.nms`` call per (image, class) with candidates; it skips the
  pairs a suppressed box would need, which makes it the fastest form on CPU.
* "batched": every (image, class) group at once: a [G, k, k] overlap matrix, then greedy
  suppression as a fixed-point iteration over all groups (``_greedy_nms_batched``), a few
  tensor operations per iteration and usually 5 to 10 iterations; no Python loop over images
  or boxes. Meant for CUDA.

Ties are broken the same way on every device: by decreasing score, then lower class, then
lower prior index (integer sort keys made of the score's bits and the index, see
``_descending_keys``), and both NMS forms compute the IoU with torchvision's arithmetic.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torchvision.ops import nms

from ssd import defaults
from ssd.box_utils import decode, pairwise_iou
from ssd.config import Config

METHODS = ("auto", "loop", "batched")
BATCHED_MAX_CANDIDATES = 1024  # "auto" keeps the loop above this many candidates per class
OVERLAP_CHUNK_ELEMENTS = 1 << 24  # IoU entries computed at once by the batched form (64 MiB)
# The batched form counts overlapping kept boxes with a matrix product of 0/1 values: a sum of
# non-negative terms is > 0 exactly when one term is 1, whatever the float format's rounding.
# float16 on CUDA (half the memory of float32); float32 elsewhere (fast on every CPU).
OVERLAP_MATMUL_DTYPE = {"cuda": torch.float16}


def detect(
    loc: torch.Tensor,
    conf: torch.Tensor,
    priors: torch.Tensor,
    score_threshold: float = defaults.SCORE_THRESHOLD,
    nms_threshold: float = defaults.NMS_THRESHOLD,
    top_k: int = defaults.TOP_K,
    candidates_per_class: int = defaults.CANDIDATES_PER_CLASS,
    variances: Sequence[float] = defaults.VARIANCES,
    method: str = "auto",
    conf_threshold: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Final detections of a batch, as the original SSD's DetectionOutput layer.

    Per image and foreground class: scores (softmax of ``conf``) > ``score_threshold``; the
    ``candidates_per_class`` highest of them go into NMS (a box whose IoU with a higher-scoring
    kept box of its class is > ``nms_threshold`` is suppressed); then at most ``top_k`` per
    image, by score. Computed in float32 whatever the input dtype (bf16/fp16 work). Equal
    scores are ordered by class, then by prior index (lower first).

    Args:
        loc: (Tensor[B, P, 4]) predicted offsets (dcx, dcy, dw, dh).
        conf: (Tensor[B, P, C]) class logits, class 0 = background.
        priors: (Tensor[P, 4]) default boxes (cx, cy, w, h), normalised.
        score_threshold: minimum class score (strictly greater) of a candidate.
        nms_threshold: IoU above which NMS suppresses a box.
        top_k: detections kept per image (<= 0: all).
        candidates_per_class: candidates per class entering NMS (<= 0: all).
        variances: (centre variance, size variance) of the box encoding.
        method: NMS form, one of ``METHODS``: "loop" (torchvision NMS per image and class,
            fastest on CPU), "batched" (whole batch in tensor operations, for CUDA) or
            "auto" (batched on CUDA when candidates_per_class is in
            [1, BATCHED_MAX_CANDIDATES], else loop). All give the same detections.
        conf_threshold: the old name of ``score_threshold`` (deprecated; replaces it when given).

    Returns:
        One dict per image: "boxes" (FloatTensor[K, 4]) (x1, y1, x2, y2) normalised (not
        clipped), "scores" (FloatTensor[K]) sorted in decreasing order, "labels"
        (Int64Tensor[K]) 0-based foreground class (conf column - 1). K may be 0.
    """
    score_threshold = _renamed_score_threshold(score_threshold, conf_threshold)
    method = nms_method(method, loc.device, candidates_per_class)
    loc, conf = loc.float(), conf.float()
    boxes = decode(loc, priors.to(device=loc.device, dtype=torch.float32), variances)  # [B,P,4]
    scores = conf.softmax(dim=-1)[..., 1:].transpose(1, 2)  # [B, P, C] -> [B, C-1, P]
    top_scores, top_priors = _candidates(scores, candidates_per_class)  # [B, C-1, k] each
    candidate = top_scores > score_threshold  # [B, C-1, k], a prefix of every row
    batch, num_groups, limit = top_priors.shape
    flat_priors = top_priors.reshape(batch, num_groups * limit)  # [B, C-1, k] -> [B, (C-1)*k]
    candidate_boxes = boxes.gather(1, flat_priors[..., None].expand(-1, -1, 4))  # [B, (C-1)*k, 4]
    group_boxes = candidate_boxes.reshape(batch * num_groups, limit, 4)  # -> [G, k, 4]
    nms_form = _greedy_nms_batched if method == "batched" else _greedy_nms_loop
    keep = nms_form(group_boxes, candidate.reshape(-1, limit), nms_threshold)  # [G, k]
    kept = keep.reshape(batch, num_groups * limit)  # [G, k] -> [B, (C-1)*k]
    return _top_k_per_image(candidate_boxes, top_scores.reshape(batch, -1), kept, limit, top_k)


def nms_method(method: str, device: torch.device, candidates_per_class: int) -> str:
    """The NMS form to use: `method` itself, or for "auto" the fastest form on `device`."""
    if method not in METHODS:
        raise ValueError(f"detect method must be one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    bounded = 0 < candidates_per_class <= BATCHED_MAX_CANDIDATES
    return "batched" if device.type == "cuda" and bounded else "loop"


def _descending_keys(values: torch.Tensor) -> torch.Tensor:
    """Distinct int64 sort keys: larger value first, then lower index along the last dim.

    Args:
        values: FloatTensor[..., N] float32 >= 0 (the bits of a non-negative float32 order
            like the float itself).

    Returns:
        Int64Tensor[..., N]: (bits of the value) * 2^b + (N - 1 - index), b bits holding N.
    """
    size = values.shape[-1]
    index_bits = max(size - 1, 1).bit_length()
    reversed_index = torch.arange(size - 1, -1, -1, device=values.device)  # [N]
    keys = values.contiguous().view(torch.int32).long()  # [..., N]
    return keys.bitwise_left_shift_(index_bits).bitwise_or_(reversed_index)


def _candidates(
    scores: torch.Tensor, candidates_per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``candidates_per_class`` highest scores of every (image, class) row.

    Args:
        scores: [B, K, P] foreground class probabilities.

    Returns:
        top_scores (FloatTensor[B, K, k]) and top_priors (Int64Tensor[B, K, k]), k =
        min(candidates_per_class, P) (P when <= 0), ordered by decreasing score, then by
        increasing prior index.
    """
    num_priors = scores.shape[-1]
    limit = num_priors if candidates_per_class <= 0 else min(candidates_per_class, num_priors)
    top_priors = _descending_keys(scores).topk(limit, dim=-1, sorted=True).indices  # [B, K, k]
    return scores.gather(-1, top_priors), top_priors


def _greedy_nms_loop(boxes: torch.Tensor, candidate: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS of each group with one ``torchvision.ops.nms`` call per non-empty group.

    Args:
        boxes: FloatTensor[G, k, 4] xyxy, each group in its NMS order.
        candidate: BoolTensor[G, k], True for a prefix of each group (the candidates).
        threshold: IoU above which a box is suppressed.

    Returns:
        BoolTensor[G, k]: the boxes NMS keeps.
    """
    num_groups, limit = candidate.shape
    # nms sorts by score: strictly decreasing stand-in scores keep the given order exactly.
    rank_scores = torch.arange(limit, 0, -1, dtype=boxes.dtype, device=boxes.device)  # [k]
    kept = [
        group * limit + nms(boxes[group, :count], rank_scores[:count], threshold)
        for group, count in enumerate(candidate.sum(dim=1).tolist()) if count
    ]
    keep = torch.zeros(num_groups * limit, dtype=torch.bool, device=boxes.device)
    if kept:
        keep[torch.cat(kept)] = True
    return keep.reshape(num_groups, limit)  # [G*k] -> [G, k]


def _greedy_nms_batched(boxes: torch.Tensor, candidate: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS of all groups at once, as a fixed-point iteration of tensor operations.

    Greedy NMS keeps box i when it is a candidate and no kept box before it overlaps it. Each
    iteration applies that rule to every box at once, given the previous iteration's kept set,
    starting from all candidates. Box i's fate depends only on boxes before it, so after
    iteration t the first t boxes of every group are settled; and a set the rule maps to itself
    is the greedy result (the only fixed point, by induction over the boxes). So the iteration
    stops as soon as nothing changes: after as many iterations as the longest chain of boxes
    suppressing or freeing one another, 5 to 10 on SSD300 outputs (at most k + 1). Each
    iteration's check reads one flag back from the device.

    Args:
        boxes: FloatTensor[G, k, 4] xyxy, each group in its NMS order.
        candidate: BoolTensor[G, k], the boxes taking part.
        threshold: IoU above which a box is suppressed.

    Returns:
        BoolTensor[G, k]: the boxes NMS keeps.
    """
    dtype = OVERLAP_MATMUL_DTYPE.get(boxes.device.type, torch.float32)
    earlier_overlaps = _overlap_matrix(boxes, threshold, dtype).triu_(diagonal=1)  # [G, j, i]: j < i
    keep = candidate
    for _ in range(candidate.shape[1] + 1):
        # [G, 1, k] @ [G, k, k] -> [G, 1, k] -> [G, k]: how many kept boxes before i overlap it
        overlapped_by = torch.bmm(keep.to(dtype)[:, None, :], earlier_overlaps)[:, 0]
        keep, previous = candidate & ~(overlapped_by > 0), keep
        if torch.equal(keep, previous):
            break
    return keep


def _overlap_matrix(boxes: torch.Tensor, threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """[G, k, 4] xyxy -> Tensor[G, k, k] of `dtype`, 1 where IoU > threshold, else 0,
    computed in group chunks.

    The IoU is torchvision's (same float32 operations), compared as torchvision compares it
    with a float64 threshold, so both NMS forms take the same decisions.
    """
    num_groups, limit = boxes.shape[:2]
    if num_groups == 0:
        return boxes.new_zeros(0, limit, limit, dtype=dtype)
    strict_threshold = _float32_below_or_at(threshold)
    groups_per_chunk = max(1, OVERLAP_CHUNK_ELEMENTS // max(limit * limit, 1))
    return torch.cat([(pairwise_iou(part, part) > strict_threshold).to(dtype)  # [chunk, k, k] each
                      for part in boxes.split(groups_per_chunk)])


def _float32_below_or_at(threshold: float) -> float:
    """The largest float32 <= threshold: for float32 x, x > it exactly when x > threshold."""
    rounded = torch.tensor(threshold, dtype=torch.float32)
    if rounded.double() > threshold:
        rounded = torch.nextafter(rounded, torch.tensor(float("-inf")))
    return rounded.item()


def _top_k_per_image(
    boxes: torch.Tensor, scores: torch.Tensor, kept: torch.Tensor, limit: int, top_k: int
) -> list[dict[str, torch.Tensor]]:
    """Each image's ``top_k`` highest kept boxes across classes, split into per-image dicts.

    Args:
        boxes: FloatTensor[B, M, 4] candidate boxes, M = (C-1) * limit, class-major.
        scores: FloatTensor[B, M]; kept: BoolTensor[B, M] survivors of NMS.
        limit: candidates per class (label of entry m is m // limit).
        top_k: detections per image (<= 0: all).

    Returns:
        One {"boxes": [K, 4], "scores": [K] decreasing, "labels": [K]} per image. The count
        per image is the only value read back from the device.
    """
    num_entries = scores.shape[1]
    count = num_entries if top_k <= 0 else min(top_k, num_entries)
    keys = _descending_keys(scores).masked_fill_(~kept, -1)  # [B, M], -1 sorts last
    top_keys, top_index = keys.topk(count, dim=1, sorted=True)  # [B, count]
    top_boxes = boxes.gather(1, top_index[..., None].expand(-1, -1, 4))  # [B, count, 4]
    top_scores = scores.gather(1, top_index)  # [B, count]
    labels = top_index // limit  # [B, count]
    found = (top_keys >= 0).sum(dim=1).tolist()
    return [
        {"boxes": top_boxes[image, :n], "scores": top_scores[image, :n], "labels": labels[image, :n]}
        for image, n in enumerate(found)
    ]


def _renamed_score_threshold(score_threshold: float, conf_threshold: float | None) -> float:
    """`score_threshold`, or `conf_threshold` (its old name, with a DeprecationWarning) when
    the caller passed that."""
    if conf_threshold is None:
        return score_threshold
    warnings.warn("conf_threshold is the old name of score_threshold; pass score_threshold",
                  DeprecationWarning, stacklevel=3)
    return conf_threshold


@dataclass(frozen=True, init=False)
class PostProcessor:
    """``detect`` with its settings bound: ``build_postprocessor(cfg)(loc, conf, priors)``.

    The fields have no defaults here: their one default lives in the config (``test.*`` and
    ``model.variances``), so build it with ``build_postprocessor``. ``conf_threshold`` is the
    old name of ``score_threshold``, still accepted (and readable) for code written against it.
    """

    score_threshold: float
    nms_threshold: float
    top_k: int
    candidates_per_class: int
    variances: tuple[float, float]

    def __init__(self, score_threshold: float | None = None, nms_threshold: float | None = None,
                 top_k: int | None = None, candidates_per_class: int | None = None,
                 variances: tuple[float, float] | None = None, *,
                 conf_threshold: float | None = None):
        settings = dict(score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                        candidates_per_class=candidates_per_class, variances=variances)
        if conf_threshold is not None:
            if score_threshold is not None:
                raise TypeError("PostProcessor: pass score_threshold or its old name "
                                "conf_threshold, not both")
            settings["score_threshold"] = _renamed_score_threshold(score_threshold, conf_threshold)
        missing = [name for name, value in settings.items() if value is None]
        if missing:
            raise TypeError(f"PostProcessor needs {', '.join(missing)} (build_postprocessor(cfg) "
                            "takes them from the config)")
        for name, value in settings.items():
            object.__setattr__(self, name, value)

    @property
    def conf_threshold(self) -> float:
        """The old name of ``score_threshold``."""
        return self.score_threshold

    def __call__(
        self, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """``detect(loc [B, P, 4], conf [B, P, C], priors [P, 4])`` with these settings: one
        dict of "boxes" [K, 4], "scores" [K], "labels" [K] per image."""
        return detect(loc, conf, priors, **asdict(self))


def build_postprocessor(cfg: Config, **overrides) -> PostProcessor:
    """The PostProcessor of ``cfg.test`` and ``cfg.model.variances``.

    Args:
        cfg: a config from ``ssd.config.load_config``.
        overrides: PostProcessor fields to replace, e.g. ``score_threshold=0.5`` for
            drawing (``conf_threshold``, its old name, also works); None values are ignored
            (handy for optional command-line flags).
    """
    old_name = overrides.pop("conf_threshold", None)
    settings = dict(
        score_threshold=cfg.test.score_threshold,
        nms_threshold=cfg.test.nms_threshold,
        top_k=cfg.test.top_k,
        candidates_per_class=cfg.test.candidates_per_class,
        variances=tuple(cfg.model.variances),
    )
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if old_name is not None:
        if overrides.get("score_threshold") is not None:
            raise TypeError("build_postprocessor: pass score_threshold or its old name "
                            "conf_threshold, not both")
        settings["score_threshold"] = _renamed_score_threshold(settings["score_threshold"], old_name)
    return PostProcessor(**settings)


def scale_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Normalised xyxy boxes (Tensor[..., 4]) -> pixel xyxy boxes (x * width, y * height).

    The pixel frame is the one the data set normalised from: VOC boxes are normalised as
    ``(xml - 1) / size``, so this gives the 0-based frame ``ssd.evaluation.voc_evaluate``
    compares (XML value minus 1; add 1 for the devkit's 1-based files); COCO boxes as
    ``x / size``, so this gives COCO's continuous frame. No clipping.
    """
    return boxes * boxes.new_tensor([width, height, width, height])
