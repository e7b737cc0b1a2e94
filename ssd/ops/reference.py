"""The plain reference algorithms the fast kernels and the benchmarks are measured against.

Written for clarity, one image (and one class) at a time with Python loops, as the classic
implementations compute them; slow by design, never used by training or inference:

* `classic_match` / `classic_multibox_loss`: the classic SSD PyTorch port's per-image matching
  and its 3:1 hard negative mining by the double-sort rank;
* `per_image_match` / `per_image_multibox_loss` / `per_image_focal_loss`: the same matching
  and losses one prior at a time, for images with or without objects;
* `classic_nms` / `classic_detect`: the classic per-class greedy NMS loop (ssd.pytorch's Detect);
* `devkit_voc_eval`: the VOC devkit's per-class AP loop (the py-faster-rcnn ``voc_eval``).

The tests check the package against these, and `scripts/benchmark.py` times the package
against them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from ssd import defaults
from ssd.box_utils import decode

FORCED_OVERLAP = 2.0  # the classic port marks each object's best prior with an impossible IoU
# The 11 recall points of the published voc_eval (np.arange(0.0, 1.1, 0.1): 0.3, 0.6 and 0.7
# are not exact tenths there).
PUBLISHED_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)


def _point_form(priors: torch.Tensor) -> torch.Tensor:
    """[P, 4] (cx, cy, w, h) -> [P, 4] (xmin, ymin, xmax, ymax)."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def _jaccard(box_a: torch.Tensor, box_b: torch.Tensor) -> torch.Tensor:
    """IoU [A, B] of xyxy boxes a [A, 4] and b [B, 4], on expanded [A, B, 2] corner tensors."""
    size = (box_a.shape[0], box_b.shape[0], 2)
    max_xy = torch.min(box_a[:, None, 2:].expand(size), box_b[None, :, 2:].expand(size))
    min_xy = torch.max(box_a[:, None, :2].expand(size), box_b[None, :, :2].expand(size))
    inter_wh = torch.clamp(max_xy - min_xy, min=0)  # [A, B, 2]
    inter = inter_wh[:, :, 0] * inter_wh[:, :, 1]  # [A, B]
    area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1]))[:, None].expand_as(inter)
    area_b = ((box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1]))[None, :].expand_as(inter)
    return inter / (area_a + area_b - inter)


def _encode(matched: torch.Tensor, priors: torch.Tensor,
            variances: Sequence[float] = defaults.VARIANCES) -> torch.Tensor:
    """Offsets [P, 4] of matched xyxy boxes [P, 4] from (cx, cy, w, h) priors [P, 4]."""
    centre = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    size = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([centre, size], dim=1)


def classic_match(truths: torch.Tensor, priors: torch.Tensor, threshold: float):
    """The classic port's ``match`` for one image.

    Args:
        truths: [n, 5] (xmin, ymin, xmax, ymax, 0-based label), n >= 1.
        priors: [P, 4] (cx, cy, w, h).
        threshold: minimum IoU for a positive prior.

    Returns:
        labels [P] long (0 = background) and loc targets [P, 4] (encoded matched boxes).
    """
    overlaps = _jaccard(truths[:, :4], _point_form(priors))  # [n, P]
    best_prior = overlaps.argmax(dim=1)  # [n]
    best_truth_overlap, best_truth = overlaps.max(dim=0)  # [P]
    best_truth_overlap.index_fill_(0, best_prior, FORCED_OVERLAP)
    for j in range(best_prior.shape[0]):  # every object keeps its best prior; later ones win
        best_truth[best_prior[j]] = j
    labels = truths[best_truth, 4].long() + 1  # [P]
    labels[best_truth_overlap < threshold] = 0
    return labels, _encode(truths[best_truth, :4], priors)


def _log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """[M, C] -> [M, 1], shifted by the global maximum as the classic port does."""
    x_max = x.max()
    return torch.log(torch.exp(x - x_max).sum(dim=1, keepdim=True)) + x_max


def classic_multibox_loss(
    loc: torch.Tensor,
    conf: torch.Tensor,
    priors: torch.Tensor,
    targets: Sequence[torch.Tensor],
    threshold: float = defaults.MATCH_IOU_THRESHOLD,
    neg_pos_ratio: int = defaults.NEG_POS_RATIO,
) -> dict[str, torch.Tensor]:
    """The classic SSD PyTorch port's MultiBoxLoss of loc [B, P, 4], conf [B, P, C].

    Per image ``classic_match`` fills loc_t [B, P, 4] and conf_t [B, P]; then, for the whole
    batch: Smooth L1 over the positives; the mining loss log_sum_exp(conf) - conf[label],
    zeroed at positives; the rank of each prior by that loss from two sorts; num_neg =
    clamp(neg_pos_ratio * num_pos, max=P - 1); cross-entropy over positives and mined
    negatives; both sums divided by N, the batch's positives. Every image needs an object.
    The mining loss is computed without gradient (it only ranks priors), the cheapest form.
    """
    batch, num_priors, num_classes = conf.shape
    loc_t = loc.new_empty(batch, num_priors, 4)
    conf_t = torch.empty(batch, num_priors, dtype=torch.long, device=conf.device)
    for index, truths in enumerate(targets):
        conf_t[index], loc_t[index] = classic_match(truths, priors, threshold)
    pos = conf_t > 0  # [B, P]
    num_pos = pos.sum(dim=1, keepdim=True)  # [B, 1]
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    with torch.no_grad():
        batch_conf = conf.reshape(-1, num_classes)  # [B, P, C] -> [B*P, C]
        mining = _log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.reshape(-1, 1))
        mining = mining.reshape(batch, num_priors)  # [B*P, 1] -> [B, P]
        mining[pos] = 0
        _, order = mining.sort(dim=1, descending=True)
        _, rank = order.sort(dim=1)
        num_neg = torch.clamp(neg_pos_ratio * num_pos, max=num_priors - 1)  # [B, 1]
        neg = rank < num_neg
    selected = pos | neg  # [B, P]
    loss_c = F.cross_entropy(conf[selected], conf_t[selected], reduction="sum")
    n = num_pos.sum()
    return {"loss_loc": loss_l / n, "loss_conf": loss_c / n}


def per_image_match(truths: torch.Tensor, priors: torch.Tensor, threshold: float):
    """One image's matching, one prior at a time: truths [n, 5] (n may be 0), priors [P, 4]
    (cx, cy, w, h) -> labels [P] long (0 = background), matched boxes [P, 4] xyxy."""
    num_priors = priors.shape[0]
    if len(truths) == 0:
        return torch.zeros(num_priors, dtype=torch.long), torch.zeros(num_priors, 4)
    iou = box_iou(truths[:, :4], _point_form(priors))  # [n, P]
    owner = [int(iou[:, p].argmax()) for p in range(num_priors)]
    overlap = [float(iou[owner[p], p]) for p in range(num_priors)]
    for j in range(len(truths)):  # each object claims its best prior; later objects win
        best = int(iou[j].argmax())
        owner[best], overlap[best] = j, 2.0
    labels = torch.tensor([int(truths[owner[p], 4]) + 1 if overlap[p] >= threshold else 0
                           for p in range(num_priors)])
    return labels, truths[owner, :4]


def per_image_multibox_loss(loc, conf, priors, targets, neg_pos_ratio=3, loc_loss="smooth_l1"):
    """MultiBoxLoss one image at a time: `per_image_match` at the default IoU threshold,
    Smooth L1 (or L1) on the positives, the min(ratio * positives, negatives) hardest negatives
    by the double-sort rank, cross-entropy on both; sums divided by max(N, 1). Images may have
    no objects."""
    loc_fn = F.smooth_l1_loss if loc_loss == "smooth_l1" else F.l1_loss
    total_loc, total_conf, total_pos = 0.0, 0.0, 0
    for i, truths in enumerate(targets):
        labels, boxes = per_image_match(truths, priors, defaults.MATCH_IOU_THRESHOLD)
        pos = labels > 0
        num_pos = int(pos.sum())
        if num_pos:
            loc_t = _encode(boxes[pos], priors[pos])
            total_loc = total_loc + loc_fn(loc[i][pos], loc_t, reduction="sum")
        ce = F.cross_entropy(conf[i], labels, reduction="none")  # [P]
        mining = ce.detach().clone()
        mining[pos] = -1.0
        _, order = mining.sort(descending=True)  # the double-sort rank trick of the classic port
        _, rank = order.sort()
        num_neg = min(neg_pos_ratio * num_pos, len(labels) - num_pos)
        selected = pos | (rank < num_neg)
        total_conf = total_conf + ce[selected].sum()
        total_pos += num_pos
    n = max(total_pos, 1)
    return {"loss_loc": total_loc / n, "loss_conf": total_conf / n}


def per_image_focal_loss(conf, priors, targets, alpha, gamma):
    """The softmax focal loss one prior at a time, divided by max(N, 1)."""
    total, total_pos = 0.0, 0
    for i, truths in enumerate(targets):
        labels, _ = per_image_match(truths, priors, defaults.MATCH_IOU_THRESHOLD)
        prob = F.softmax(conf[i], dim=1)
        for p, label in enumerate(labels.tolist()):
            pt = prob[p, label]
            weight = alpha if label > 0 else 1 - alpha
            total = total - weight * (1 - pt) ** gamma * torch.log(pt)
        total_pos += int((labels > 0).sum())
    return total / max(total_pos, 1)


def classic_nms(boxes: torch.Tensor, scores: torch.Tensor, overlap: float,
                candidates: int) -> torch.Tensor:
    """Greedy NMS, one Python iteration per kept box: boxes [N, 4] xyxy, scores [N] -> kept
    indices [K], best first. Only the `candidates` best boxes take part."""
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
                   candidates_per_class: int,
                   variances: Sequence[float] = defaults.VARIANCES) -> list[dict[str, torch.Tensor]]:
    """Detections of loc [B, P, 4], conf [B, P, C] per image, per class: threshold, then
    ``classic_nms``; then the ``top_k`` best of the image. One dict of "boxes" [K, 4],
    "scores" [K], "labels" [K] (0-based foreground class) per image."""
    probabilities = conf.float().softmax(dim=-1)
    results = []
    for image_loc, image_probabilities in zip(loc.float(), probabilities):
        boxes = decode(image_loc, priors, variances)
        kept_scores, kept_boxes, kept_labels = [torch.zeros(0)], [torch.zeros(0, 4)], [
            torch.zeros(0, dtype=torch.long)]
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


def devkit_voc_eval(gt: dict, dets: dict, label: int, iou_threshold: float = 0.5,
                    use_07_metric: bool = True,
                    recall_points: np.ndarray = PUBLISHED_RECALL_POINTS) -> float:
    """One class's AP as the published ``voc_eval`` computes it: one Python iteration per
    detection of the data set in score order; NaN when the class has no non-difficult ground
    truth (where the original divides by zero).

    gt and dets are in the ``ssd.evaluation.voc_evaluate`` format (pixel xyxy boxes, inclusive
    pixels). The only liberty: detections of equal score keep their input order (a stable
    sort), where the original's ``np.argsort(-confidence)`` leaves the order of ties unspecified.
    """
    records, num_positive = {}, 0
    for image_id, truth in gt.items():
        mask = np.asarray(truth["labels"]) == label
        difficult = np.asarray(truth["difficult"])[mask]
        records[image_id] = {"boxes": np.asarray(truth["boxes"], dtype=float).reshape(-1, 4)[mask],
                             "difficult": difficult, "taken": [False] * int(mask.sum())}
        num_positive += int((~difficult).sum())
    image_ids, scores, boxes = [], [], []
    for image_id in gt:
        found = dets.get(image_id)
        if found is None:
            continue
        mask = np.asarray(found["labels"]) == label
        image_ids += [image_id] * int(mask.sum())
        scores.append(np.asarray(found["scores"], dtype=float)[mask])
        boxes.append(np.asarray(found["boxes"], dtype=float).reshape(-1, 4)[mask])
    order = np.argsort(-np.concatenate(scores or [np.zeros(0)]), kind="stable")
    boxes = np.concatenate(boxes or [np.zeros((0, 4))])[order]
    image_ids = [image_ids[i] for i in order]
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d in range(len(order)):
        record, box = records[image_ids[d]], boxes[d]
        best, best_index = -np.inf, -1
        if record["boxes"].size > 0:
            gt_boxes = record["boxes"]
            iw = np.maximum(np.minimum(gt_boxes[:, 2], box[2])
                            - np.maximum(gt_boxes[:, 0], box[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gt_boxes[:, 3], box[3])
                            - np.maximum(gt_boxes[:, 1], box[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
                     + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0)
                     * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0) - inter)
            overlaps = inter / union
            best, best_index = overlaps.max(), overlaps.argmax()  # the first of equal overlaps
        if best > iou_threshold:
            if not record["difficult"][best_index]:
                if not record["taken"][best_index]:
                    tp[d] = 1.0
                    record["taken"][best_index] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if num_positive == 0:
        return float("nan")
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_positive
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _devkit_ap(recall, precision, use_07_metric, recall_points)


def _devkit_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool,
               recall_points: np.ndarray) -> float:
    """The devkit's AP: 11-point interpolated (VOC07) or the area under the precision
    envelope (VOC2010+)."""
    if use_07_metric:
        ap = 0.0
        for threshold in recall_points:
            above = precision[recall >= threshold]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
