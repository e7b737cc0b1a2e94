"""Detection post-processing: decode + softmax + per-class threshold + NMS + top-k.

    dets = detect(loc, conf, priors)          # list (per image) of dicts, boxes normalised
    post = build_postprocessor(cfg)           # the same with the settings of cfg.test
    pixels = scale_boxes(dets[0]["boxes"], width, height)

Decoding, softmax, thresholding and the per-class candidate selection run for the whole batch
at once (one top-k over every (image, class) row); NMS is one ``torchvision.ops.batched_nms``
call per image, its groups being the classes. There is no Python loop over classes or boxes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torchvision.ops import batched_nms

from ssd.box_utils import decode


def detect(
    loc: torch.Tensor,
    conf: torch.Tensor,
    priors: torch.Tensor,
    conf_threshold: float = 0.01,
    nms_threshold: float = 0.45,
    top_k: int = 200,
    candidates_per_class: int = 400,
    variances: Sequence[float] = (0.1, 0.2),
) -> list[dict[str, torch.Tensor]]:
    """Final detections of a batch, as the original SSD's DetectionOutput layer.

    Per image and foreground class: scores (softmax of ``conf``) > ``conf_threshold``; the
    ``candidates_per_class`` highest of them go into NMS (a box whose IoU with a higher-scoring
    kept box of its class is > ``nms_threshold`` is suppressed); then at most ``top_k`` per
    image, by score. Computed in float32 whatever the input dtype (bf16/fp16 work).

    Args:
        loc: (Tensor[B, P, 4]) predicted offsets (dcx, dcy, dw, dh).
        conf: (Tensor[B, P, C]) class logits, class 0 = background.
        priors: (Tensor[P, 4]) default boxes (cx, cy, w, h), normalised.
        conf_threshold: minimum score (strictly greater) of a candidate.
        nms_threshold: IoU above which NMS suppresses a box.
        top_k: detections kept per image (<= 0: all).
        candidates_per_class: candidates per class entering NMS (<= 0: all).
        variances: (centre variance, size variance) of the box encoding.

    Returns:
        One dict per image: "boxes" (FloatTensor[K, 4]) (x1, y1, x2, y2) normalised (not
        clipped), "scores" (FloatTensor[K]) sorted in decreasing order, "labels"
        (Int64Tensor[K]) 0-based foreground class (conf column - 1). K may be 0.
    """
    batch = conf.shape[0]
    loc, conf = loc.float(), conf.float()
    boxes = decode(loc, priors.to(device=loc.device, dtype=torch.float32), variances)  # [B,P,4]
    scores = conf.softmax(dim=-1)[..., 1:].transpose(1, 2)  # [B, P, C] -> [B, C-1, P]
    image, label, prior, score = _candidates(scores, conf_threshold, candidates_per_class)
    candidate_boxes = boxes[image, prior]  # [N, 4], grouped by image
    counts = torch.bincount(image, minlength=batch).tolist()
    return [
        _nms_top_k(image_boxes, image_scores, image_labels, nms_threshold, top_k)
        for image_boxes, image_scores, image_labels in zip(
            candidate_boxes.split(counts), score.split(counts), label.split(counts))
    ]


def _candidates(
    scores: torch.Tensor, conf_threshold: float, candidates_per_class: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NMS candidates of every (image, class): the highest scores above the threshold.

    Args:
        scores: [B, K, P] foreground class probabilities.

    Returns:
        image, label, prior (Int64Tensor[N] each) and score (FloatTensor[N]) of the N
        candidates, ordered by image, then class, then decreasing score.
    """
    num_priors = scores.shape[-1]
    limit = num_priors if candidates_per_class <= 0 else min(candidates_per_class, num_priors)
    top_scores, top_priors = scores.topk(limit, dim=-1, sorted=True)  # [B, K, limit]
    image, label, rank = torch.nonzero(top_scores > conf_threshold, as_tuple=True)
    return image, label, top_priors[image, label, rank], top_scores[image, label, rank]


def _nms_top_k(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms_threshold: float,
    top_k: int,
) -> dict[str, torch.Tensor]:
    """Per-class NMS of one image's candidates, then its ``top_k`` highest detections.

    One ``batched_nms`` call per image rather than per batch: for large inputs it scans all
    its boxes once per group, so a single call over a batch of 32 (640 groups) costs 2-3x
    more than 32 calls of 20 groups each.

    Args:
        boxes: FloatTensor[N, 4] xyxy; scores: FloatTensor[N]; labels: Int64Tensor[N].

    Returns:
        {"boxes": [K, 4], "scores": [K] decreasing, "labels": [K]} with K <= top_k.
    """
    keep = batched_nms(boxes, scores, labels, nms_threshold)  # sorted by decreasing score
    if top_k > 0:
        keep = keep[:top_k]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


@dataclass(frozen=True)
class PostProcessor:
    """``detect`` with its settings bound: ``build_postprocessor(cfg)(loc, conf, priors)``.

    The fields have no defaults here: their one default lives in the config (``test.*`` and
    ``model.variances``), so build it with ``build_postprocessor``.
    """

    conf_threshold: float
    nms_threshold: float
    top_k: int
    candidates_per_class: int
    variances: tuple[float, float]

    def __call__(
        self, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """``detect(loc [B, P, 4], conf [B, P, C], priors [P, 4])`` with these settings: one
        dict of "boxes" [K, 4], "scores" [K], "labels" [K] per image."""
        return detect(loc, conf, priors, **asdict(self))


def build_postprocessor(cfg, **overrides) -> PostProcessor:
    """The PostProcessor of ``cfg.test`` and ``cfg.model.variances``.

    Args:
        cfg: a config from ``ssd.config.load_config``.
        overrides: PostProcessor fields to replace, e.g. ``conf_threshold=0.5`` for
            drawing; None values are ignored (handy for optional command-line flags).
    """
    settings = dict(
        conf_threshold=cfg.test.conf_threshold,
        nms_threshold=cfg.test.nms_threshold,
        top_k=cfg.test.top_k,
        candidates_per_class=cfg.test.candidates_per_class,
        variances=tuple(cfg.model.variances),
    )
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return PostProcessor(**settings)


def scale_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Normalised xyxy boxes (Tensor[..., 4]) -> pixel xyxy boxes (x * width, y * height).

    The pixel frame is the one the data set normalised from: VOC boxes are normalised as
    ``(xml - 1) / size``, so this gives the 0-based frame ``ssd.evaluation.voc_evaluate``
    compares (XML value minus 1; add 1 for the devkit's 1-based files); COCO boxes as
    ``x / size``, so this gives COCO's continuous frame. No clipping.
    """
    return boxes * boxes.new_tensor([width, height, width, height])
