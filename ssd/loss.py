"""Training objectives: SSD's MultiBoxLoss (3:1 hard negative mining) and a softmax focal loss.

    crit = MultiBoxLoss(num_classes=21, iou_threshold=0.5, neg_pos_ratio=3, variances=(0.1, 0.2))
    losses = crit(loc, conf, priors, targets)   # {"loss_loc": ..., "loss_conf": ...}

Both losses share the same steps, vectorised over the batch (no loop over images or priors):
validate and pad the targets, match priors to ground truth (`ssd.box_utils.match`), a
localisation term over the positive priors, and a confidence term. Each term is summed and
divided by N = the number of positive priors in the whole batch (max(N, 1), so a batch without
objects gives finite zeros). The arithmetic is float32 even under autocast.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssd import defaults
from ssd.box_utils import encode, match, pad_targets
from ssd.ops.chunked_match import chunk_elements
from ssd.ops.mining import background_loss, hard_negative_mask
from ssd.ops.prior_iou import PriorGeometry, prior_geometry

LOC_LOSSES = ("smooth_l1", "l1")
BOX_TOLERANCE = 1e-3  # how far outside [0, 1] a normalised coordinate may lie (rounding)


class PriorTargets(NamedTuple):
    """What every prior of every image should predict.

    labels: [B, P] long, 0 = background, k + 1 = foreground class k.
    positive: [B, P] bool, priors matched to a ground-truth box.
    positive_index: [K] long, the positives' indices into the flattened [B * P] priors, in
        `positive.nonzero()` order (row-major).
    loc_targets: [K, 4] encoded offsets of the K positive priors, in that order.
    """

    labels: torch.Tensor
    positive: torch.Tensor
    positive_index: torch.Tensor
    loc_targets: torch.Tensor


def prepare_targets(
    targets: Sequence[torch.Tensor], num_classes: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate per-image targets and pad them into one float32 batch.

    Args:
        targets: B tensors [n_i, 5] = (xmin, ymin, xmax, ymax) normalised, 0-based label.
            An image without objects may pass any tensor with no elements.
        num_classes: classes including background, so labels lie in [0, num_classes - 2].
        device: where the padded batch goes.

    Returns:
        gt [B, n, 5] float32 zero-padded, valid [B, n] bool (see `pad_targets`).

    Raises:
        ValueError naming the image index and the offending row.
    """
    rows = []
    for index, target in enumerate(targets):  # one reshape/copy per image, no per-box work
        target = torch.as_tensor(target)
        if target.numel() == 0:
            target = target.reshape(0, 5)
        if target.ndim != 2 or target.shape[1] != 5:
            raise ValueError(
                f"targets[{index}] must have shape [n, 5] (xmin, ymin, xmax, ymax, label), "
                f"got {list(target.shape)}"
            )
        rows.append(target.to(device, torch.float32))
    gt, valid = pad_targets(rows)  # [B, n, 5], [B, n]
    _raise_on_bad_row(gt, valid, num_classes)
    return gt, valid


def _raise_on_bad_row(gt: torch.Tensor, valid: torch.Tensor, num_classes: int) -> None:
    """Check every row of a padded batch gt [B, n, 5] at once; raise for the first bad one."""
    boxes, labels = gt[..., :4], gt[..., 4]  # [B, n, 4], [B, n]
    problems = [
        (~torch.isfinite(gt).all(dim=-1), "has a value that is not finite"),
        ((labels < 0) | (labels > num_classes - 2),
         f"has a label outside [0, {num_classes - 2}] (num_classes={num_classes} includes "
         "background; labels are 0-based foreground classes)"),
        (labels != labels.round(), "has a label that is not a whole number"),
        ((boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1]),
         "is not a box with xmax > xmin and ymax > ymin"),
        (((boxes < -BOX_TOLERANCE) | (boxes > 1 + BOX_TOLERANCE)).any(dim=-1),
         f"has a coordinate outside [0, 1] (tolerance {BOX_TOLERANCE}; boxes must be "
         "normalised by the image size)"),
    ]  # fmt: skip
    bad = torch.stack([mask for mask, _ in problems]) & valid  # [checks, B, n]
    if not bad.any():  # the only synchronisation on the happy path
        return
    for mask, (_, reason) in zip(bad, problems):
        if mask.any():
            image, row = (int(i) for i in mask.nonzero()[0])
            values = [round(v, 6) for v in gt[image, row].tolist()]
            raise ValueError(f"targets[{image}] row {row} {values} {reason}")


def assign_targets(
    gt: torch.Tensor,
    valid: torch.Tensor,
    priors: torch.Tensor,
    iou_threshold: float,
    variances: Sequence[float],
    geometry: PriorGeometry | None = None,
) -> PriorTargets:
    """Match priors to the ground truth of a batch and build what each prior should predict.

    Args:
        gt: [B, n, 5] padded targets (xyxy normalised, 0-based label); see `prepare_targets`.
        valid: [B, n] bool, False for padding.
        priors: [P, 4] default boxes (cx, cy, w, h), float32.
        iou_threshold: minimum IoU for a positive prior.
        variances: encoding variances (centre, size).
        geometry: the priors' `PriorGeometry` when the caller keeps it; else computed here.

    Returns:
        PriorTargets(labels [B, P], positive [B, P], positive_index [K], loc_targets [K, 4]).
    """
    with torch.no_grad():
        matched_index, positive, _ = match(gt[..., :4], valid, geometry or priors, iou_threshold,
                                           chunk_elements(gt.device))  # [B, P] each
        gt_labels = gt[..., 4].long() + 1  # [B, n], background is 0
        labels = gt_labels.gather(1, matched_index).masked_fill_(~positive, 0)  # [B, P]
        positive_index = flat_index(positive)  # [K], row-major
        num_priors = positive.shape[1]
        image, prior = positive_index // num_priors, positive_index % num_priors  # [K] each
        matched_boxes = gt[image, matched_index[image, prior], :4]  # [K, 4] xyxy
        loc_targets = encode(matched_boxes, priors[prior], variances)  # [K, 4]
    return PriorTargets(labels, positive, positive_index, loc_targets)


def flat_index(mask: torch.Tensor) -> torch.Tensor:
    """Indices [K] of the True entries of mask [B, P] in the flattened [B * P], row-major."""
    return mask.reshape(-1).nonzero().squeeze(1)


def _rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` [K] (see `flat_index`) of values [B, P, ...] flattened -> [K, ...].

    An index_select of the flattened rows: its backward is an index_add into the gradient,
    much faster on CPU than the accumulating index_put of boolean indexing.
    """
    flat = values.reshape(-1, *values.shape[2:])  # [B, P, ...] -> [B*P, ...]
    return flat.index_select(0, index)


def localization_loss(loc_pred: torch.Tensor, loc_targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Summed Smooth L1 (beta 1, as SSD) or L1 over [K, 4] offsets -> scalar."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(loc_pred, loc_targets, reduction="sum", beta=1.0)
    return F.l1_loss(loc_pred, loc_targets, reduction="sum")


def softmax_focal_loss(
    conf: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Summed softmax focal loss  -alpha_t (1 - p_t)^gamma log p_t  over all priors.

    p_t is the softmax probability of the target class; alpha_t is `alpha` for foreground
    targets and `1 - alpha` for background ones (RetinaNet's weighting).

    Args:
        conf: [M, C] float32 logits.
        labels: [M] long targets, 0 = background.

    Returns:
        scalar sum over the M rows.
    """
    log_pt = F.log_softmax(conf, dim=-1).gather(1, labels[:, None]).squeeze(1)  # [M]
    one_minus_pt = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny)  # [M]
    alpha_t = torch.full_like(log_pt, 1.0 - alpha).masked_fill_(labels > 0, alpha)  # [M]
    return -(alpha_t * one_minus_pt.pow(gamma) * log_pt).sum()


class _DetectionLoss(nn.Module):
    """Shared steps: checks, matching, localisation term, normalisation by N, float32."""

    def __init__(
        self,
        num_classes: int,
        iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
        variances: Sequence[float] = defaults.VARIANCES,
        loc_weight: float = 1.0,
        loc_loss: str = "smooth_l1",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
        if loc_loss not in LOC_LOSSES:
            raise ValueError(f"No localisation loss named {loc_loss!r}; known: {', '.join(LOC_LOSSES)}")
        if len(variances) != 2:
            raise ValueError(f"variances must be (centre, size), got {tuple(variances)}")
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.variances = tuple(float(v) for v in variances)
        self.loc_weight = loc_weight
        self.loc_loss = loc_loss
        self._geometry_priors: torch.Tensor | None = None  # the priors `_geometry` is of
        self._geometry: PriorGeometry | None = None

    def forward(
        self,
        loc: torch.Tensor,
        conf: torch.Tensor,
        priors: torch.Tensor,
        targets: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch.

        Args:
            loc: [B, P, 4] predicted offsets.
            conf: [B, P, C] raw class logits, class 0 = background.
            priors: [P, 4] default boxes (cx, cy, w, h).
            targets: B tensors [n_i, 5] = normalised xyxy box, 0-based foreground label.

        Returns:
            {"loss_loc": scalar, "loss_conf": scalar}, float32, each summed and divided by
            max(N, 1) with N the positive priors in the batch; `loss_loc` includes `loc_weight`.
        """
        self._check_shapes(loc, conf, priors, targets)
        gt, valid = prepare_targets(targets, self.num_classes, loc.device)
        with torch.autocast(loc.device.type, enabled=False):
            loc, conf = loc.float(), conf.float()
            priors = priors.to(loc.device, torch.float32)
            assigned = assign_targets(gt, valid, priors, self.iou_threshold, self.variances,
                                      self.prior_geometry(priors))
            num_pos = assigned.positive.sum().clamp(min=1).float()
            loc_pred = _rows(loc, assigned.positive_index)  # [B, P, 4] -> [K, 4]
            loss_loc = localization_loss(loc_pred, assigned.loc_targets, self.loc_loss)
            loss_conf = self.confidence_loss(conf, assigned)
        return {"loss_loc": self.loc_weight * loss_loc / num_pos, "loss_conf": loss_conf / num_pos}

    def prior_geometry(self, priors: torch.Tensor) -> PriorGeometry:
        """The `PriorGeometry` of priors [P, 4] (cx, cy, w, h), kept between calls.

        A model passes the same priors every step, and finding their distinct intervals sorts
        all P twice; the geometry is computed again only when the priors differ from the last
        ones in shape, device or value (one comparison of P x 4 numbers).
        """
        seen = self._geometry_priors
        if (seen is None or seen.shape != priors.shape or seen.device != priors.device
                or not torch.equal(seen, priors)):
            self._geometry_priors = priors.detach().clone()
            self._geometry = prior_geometry(self._geometry_priors)
        return self._geometry

    def confidence_loss(self, conf: torch.Tensor, assigned: PriorTargets) -> torch.Tensor:
        """Summed (not yet normalised) classification loss; conf [B, P, C] float32."""
        raise NotImplementedError

    def _check_shapes(
        self, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor, targets: Sequence
    ) -> None:
        if loc.ndim != 3:
            raise ValueError(f"loc must have shape [B, P, 4], got {list(loc.shape)}")
        batch, num_priors = loc.shape[:2]
        expected = {
            "loc": (list(loc.shape), [batch, num_priors, 4]),
            "conf": (list(conf.shape), [batch, num_priors, self.num_classes]),
            "priors": (list(priors.shape), [num_priors, 4]),
        }
        for name, (got, want) in expected.items():
            if got != want:
                raise ValueError(f"{name} must have shape {want}, got {got} (B={batch}, "
                                 f"P={num_priors} from loc, num_classes={self.num_classes})")
        if len(targets) != batch:
            raise ValueError(f"Got {len(targets)} targets for a batch of {batch} images")


class MultiBoxLoss(_DetectionLoss):
    """SSD's loss: Smooth L1 on positives + cross-entropy on positives and mined negatives.

    Per image, the negatives with the largest background cross-entropy are kept,
    ceil(`neg_pos_ratio` x positives) (capped at the number of negatives); see
    `ssd.ops.mining.hard_negative_mask`. Gradients reach only positive priors' `loc` and the
    selected priors' `conf`.
    """

    def __init__(
        self,
        num_classes: int,
        iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
        neg_pos_ratio: float = defaults.NEG_POS_RATIO,
        variances: Sequence[float] = defaults.VARIANCES,
        loc_weight: float = 1.0,
        loc_loss: str = "smooth_l1",
    ):
        super().__init__(num_classes, iou_threshold, variances, loc_weight, loc_loss)
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.neg_pos_ratio = neg_pos_ratio

    def confidence_loss(self, conf: torch.Tensor, assigned: PriorTargets) -> torch.Tensor:
        """Cross-entropy summed over positives and mined negatives; conf [B, P, C]."""
        selected = assigned.positive | self.mine_negatives(conf, assigned.positive)  # [B, P]
        index = flat_index(selected)  # [S]
        # Only the selected rows enter the graph: [B, P, C] -> [S, C].
        return F.cross_entropy(_rows(conf, index), _rows(assigned.labels, index), reduction="sum")

    def mine_negatives(self, conf: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """[B, P, C] logits + [B, P] positives -> [B, P] bool mined negatives."""
        return hard_negative_mask(background_loss(conf), positive, self.neg_pos_ratio)


class FocalLoss(_DetectionLoss):
    """Localisation as MultiBoxLoss + softmax focal loss over every prior (no mining).

    Both terms are normalised by the number of positives (as RetinaNet).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 0.25,
        gamma: float = 2.0,
        iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
        variances: Sequence[float] = defaults.VARIANCES,
        loc_weight: float = 1.0,
        loc_loss: str = "smooth_l1",
    ):
        super().__init__(num_classes, iou_threshold, variances, loc_weight, loc_loss)
        if not 0.0 <= alpha <= 1.0 or gamma < 0:
            raise ValueError(f"Focal loss needs alpha in [0, 1] and gamma >= 0, got {alpha}, {gamma}")
        self.alpha = alpha
        self.gamma = gamma

    def confidence_loss(self, conf: torch.Tensor, assigned: PriorTargets) -> torch.Tensor:
        """Focal loss summed over all priors; conf [B, P, C]."""
        flat_conf = conf.reshape(-1, self.num_classes)  # [B, P, C] -> [B*P, C]
        return softmax_focal_loss(flat_conf, assigned.labels.reshape(-1), self.alpha, self.gamma)


LOSSES: dict[str, type[_DetectionLoss]] = {"multibox": MultiBoxLoss, "focal": FocalLoss}


def build_loss(cfg: Any) -> nn.Module:
    """The loss registered under `cfg.loss.name` in LOSSES, built from its own signature:
    num_classes and variances come from `cfg.model`, every other parameter from the `cfg.loss`
    key of the same name (so a registered loss needs no code here)."""
    import inspect

    settings = cfg.loss
    if settings.name not in LOSSES:
        raise ValueError(f"No loss named {settings.name!r}; known: {', '.join(LOSSES)}")
    loss_class = LOSSES[settings.name]
    parameters = inspect.signature(loss_class).parameters
    options = {name: settings[name] for name in parameters if name in settings}
    return loss_class(num_classes=cfg.model.num_classes, variances=tuple(cfg.model.variances),
                      **options)
