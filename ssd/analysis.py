"""What the loss sees in one image, as numbers: which feature map each default box belongs to,
how the priors are matched to the objects, and which negatives hard negative mining keeps.

    found = find_dataset_image(cfg, "photo.jpg")   # an image of cfg's data set, any format
    target = found.target[~found.difficult]        # Tensor[n, 5], as training sees it
    target = read_voc_target(annotation_path("VOC2007/JPEGImages/000001.jpg"), class_names)
    matches = match_priors(target, priors, num_classes)          # PriorMatches, Tensor[P] each
    mined = mine_negatives(target, priors, conf, neg_pos_ratio=3)  # MinedNegatives

The numbers come from the training code itself: `ssd.loss.prepare_targets` and
`assign_targets` (positives and their labels), `ssd.box_utils.match` (the matched object and
its IoU, the call `assign_targets` makes) and `MultiBoxLoss.mine_negatives` (the negatives the
confidence loss keeps); targets are read through the config's data set (VOC, COCO, YOLO or
shapes: the records and coordinate origin training uses), or a VOC XML file with the data
set's own parser. `ssd.visualize` draws them.

Shapes: `target` is Tensor[n, 5] (xmin, ymin, xmax, ymax normalised, 0-based label) as the
loss takes; `priors` is Tensor[P, 4] (cx, cy, w, h) normalised; `conf` is Tensor[P, C] logits
of one image.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ssd import defaults
from ssd.box_utils import cxcywh_to_xyxy, match, pairwise_iou
from ssd.data import BaseTransform, DetectionDataset, VOCDataset, build_dataset, parse_voc_xml
from ssd.data.common import pack_target, sanitize_boxes
from ssd.images import network_input
from ssd.loss import MultiBoxLoss, assign_targets, prepare_targets
from ssd.priors import boxes_per_location


# ----------------------------------------------------------------------------- inputs
def annotation_path(image_path: str | Path) -> Path:
    """The VOC annotation of an image: <root>/JPEGImages/<id>.jpg -> <root>/Annotations/<id>.xml."""
    image_path = Path(image_path)
    return image_path.parent.parent / "Annotations" / f"{image_path.stem}.xml"


def read_voc_target(xml_path: str | Path, class_names: Sequence[str],
                    keep_difficult: bool = False) -> torch.Tensor:
    """A VOC XML file as the loss's target: Tensor[n, 5] = (xmin, ymin, xmax, ymax, label).

    Boxes are normalised as `VOCDataset` does (clipped to the image, then ``(xml - origin) /
    width or height`` with its coordinate origin); difficult objects are left out unless
    `keep_difficult` (as in training).

    Raises:
        ssd.data.DataError: missing file, bad XML, unknown class (the message names the file).
    """
    target, difficult = read_voc_objects(xml_path, class_names)
    return target if keep_difficult else target[~difficult]


def read_voc_objects(xml_path: str | Path, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object of a VOC XML file: (target Tensor[n, 5] as `read_voc_target`, difficult
    BoolTensor[n])."""
    parsed = parse_voc_xml(xml_path, {name: label for label, name in enumerate(class_names)})
    origin = VOCDataset.coordinate_origin
    boxes, valid, _ = sanitize_boxes(parsed.boxes, origin, parsed.width, parsed.height)
    scale = np.array([parsed.width, parsed.height] * 2, dtype=np.float32)
    normalised = (boxes[valid] - origin) / scale  # [n, 4]
    target = torch.from_numpy(pack_target(normalised, parsed.labels[valid]))  # [n, 5]
    return target, torch.from_numpy(parsed.difficult[valid])


class DatasetImage(NamedTuple):
    """One image of a data set with every object: target Tensor[n, 5] as `read_voc_target`,
    difficult BoolTensor[n] (VOC difficult, COCO crowd), and the data set's class names."""

    image_path: Path
    target: torch.Tensor
    difficult: torch.Tensor
    class_names: list[str]


def find_dataset_image(cfg, image: str | Path) -> DatasetImage:
    """`image` (an image file, or an image id such as ``000001`` or ``VOC2007/000001``) looked up in
    the test set of `cfg.data`, then in its training set, read as the data set reads it.

    The training set is only built when the test set was (a shapes set is then never
    regenerated: it already has the config's settings).

    Raises:
        FileNotFoundError: no image of either set is that file or has that id (names the
            data set).
        ssd.data.DataError, ssd.config.ConfigError: the data set cannot be built.
    """
    searched = []
    for train in (False, True):
        dataset = build_dataset(cfg, train=train)
        index = dataset_index(dataset, image)
        if index is not None:
            return dataset_image(dataset, index)
        searched.append(dataset.report.name)
    raise FileNotFoundError(
        f"{image} is not an image of the config's data set (data.format {cfg.data.format}, "
        f"data.root {cfg.data.root}; searched {' and '.join(searched)}): give an image file "
        "or image id of that set, or point data.root (--opts data.root=...) at the image's set")


def dataset_index(dataset: DetectionDataset, image: str | Path) -> int | None:
    """Index of the record whose image is the file `image`; for a value that is no file, of
    the first record whose image id is `image` or ends with ``/<image>`` (VOC ids are
    ``VOC2007/000001``, YOLO ids ``<split>/<stem>``, COCO ids numbers). None when none is."""
    if Path(image).is_file():
        resolved = Path(image).resolve()
        return next((index for index, record in enumerate(dataset.records)
                     if record.image_path.resolve() == resolved), None)
    wanted = str(image)
    return next((index for index, image_id in enumerate(dataset.image_ids)
                 if image_id == wanted or image_id.endswith(f"/{wanted}")), None)


def dataset_image(dataset: DetectionDataset, index: int) -> DatasetImage:
    """Image `index` of `dataset` with all its objects, normalised as the data set's training
    samples are (``(pixels - coordinate_origin) / width or height``)."""
    annotation = dataset.get_annotation(index)
    scale = np.array([annotation["width"], annotation["height"]] * 2, dtype=np.float32)
    normalised = (annotation["boxes"] - dataset.coordinate_origin) / scale  # [n, 4]
    target = torch.from_numpy(pack_target(normalised, annotation["labels"]))  # [n, 5]
    return DatasetImage(dataset.records[index].image_path, target,
                        torch.from_numpy(annotation["difficult"]), list(dataset.class_names))


@torch.no_grad()
def image_confidences(model: torch.nn.Module, image: np.ndarray, image_size: int,
                      mean: Sequence[float]) -> torch.Tensor:
    """The model's class logits for one uint8 BGR image: Tensor[P, C] float32 (fp32, the
    evaluation's pre-processing).

    Trained models run in eval mode. A model whose batch norm layers never saw a training
    batch (a fresh one: running statistics still 0 and 1) runs, on a copy, with the batch
    statistics of this image, as training computes its first losses.
    """
    inputs = network_input(image, BaseTransform(image_size, mean))  # [S, S, 3]
    batch = torch.from_numpy(inputs).permute(2, 0, 1)[None]  # (S, S, 3) -> (1, 3, S, S)
    model = copy.deepcopy(model).train() if untrained_batch_norm(model) else model.eval()
    _, conf = model(batch.to(next(model.parameters()).device))
    return conf[0].float().cpu()


def untrained_batch_norm(model: torch.nn.Module) -> bool:
    """True when the model has batch norm layers and none has tracked a training batch."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return bool(norms) and all(int(m.num_batches_tracked) == 0 for m in norms
                               if m.num_batches_tracked is not None)


# ------------------------------------------------------------------ prior bookkeeping
def layer_sizes(feature_maps: Sequence[int], aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """Number of default boxes of each feature map: side^2 x boxes per location."""
    return [size * size * boxes_per_location(ratios)
            for size, ratios in zip(feature_maps, aspect_ratios)]


def prior_layers(feature_maps: Sequence[int], aspect_ratios: Sequence[Sequence[float]]) -> torch.Tensor:
    """Int64Tensor[P]: the feature map (layer) index of every default box."""
    counts = torch.tensor(layer_sizes(feature_maps, aspect_ratios))
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def location_indices(feature_maps: Sequence[int], aspect_ratios: Sequence[Sequence[float]],
                     layer: int, row: int, col: int) -> torch.Tensor:
    """Int64Tensor[A]: indices into the priors of the A default boxes at (row, col) of `layer`
    (priors are ordered by feature map, row, column, then box shape)."""
    if not 0 <= layer < len(feature_maps):
        raise ValueError(f"layer {layer} does not exist: the config has {len(feature_maps)} "
                         f"feature maps (0-{len(feature_maps) - 1})")
    size = feature_maps[layer]
    if not (0 <= row < size and 0 <= col < size):
        raise ValueError(f"cell ({row}, {col}) is outside the {size}x{size} map of layer {layer}")
    per_cell = boxes_per_location(aspect_ratios[layer])
    start = sum(layer_sizes(feature_maps, aspect_ratios)[:layer]) + (row * size + col) * per_cell
    return torch.arange(start, start + per_cell)


# ------------------------------------------------------------- matching and mining
class PriorMatches(NamedTuple):
    """The loss's assignment of one image's priors (all Tensor[P]).

    positive: bool; labels: int64, 0 = background, k + 1 = class k; gt_index: int64, the
    matched object (meaningful for positives); iou: float, IoU with that object; forced:
    bool, positives below the IoU threshold (each object's own best prior, the paper's
    bipartite step).
    """

    positive: torch.Tensor
    labels: torch.Tensor
    gt_index: torch.Tensor
    iou: torch.Tensor
    forced: torch.Tensor


def match_priors(target: torch.Tensor, priors: torch.Tensor, num_classes: int,
                 iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
                 variances: Sequence[float] = defaults.VARIANCES) -> PriorMatches:
    """How the loss assigns the priors [P, 4] to one image's target [n, 5]."""
    gt, valid = prepare_targets([target], num_classes)  # [1, n, 5], [1, n]
    priors = priors.float()
    assigned = assign_targets(gt, valid, priors, iou_threshold, variances)
    gt_index, _, iou = match(gt[..., :4], valid, priors, iou_threshold)  # [1, P] each
    positive = assigned.positive[0]
    return PriorMatches(positive, assigned.labels[0], gt_index[0], iou[0],
                        positive & (iou[0] < iou_threshold))


class MinedNegatives(NamedTuple):
    """Hard negative mining of one image.

    indices: Int64Tensor[N] of the mined priors, hardest first; loss: [N] their background
    cross-entropy; iou: [N] their largest IoU with any object; top_label / top_score: [N]
    the foreground class the model prefers for each and its probability; num_positive: int.
    """

    indices: torch.Tensor
    loss: torch.Tensor
    iou: torch.Tensor
    top_label: torch.Tensor
    top_score: torch.Tensor
    num_positive: int


def mine_negatives(target: torch.Tensor, priors: torch.Tensor, conf: torch.Tensor,
                   neg_pos_ratio: float = defaults.NEG_POS_RATIO,
                   iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
                   variances: Sequence[float] = defaults.VARIANCES) -> MinedNegatives:
    """The negatives `MultiBoxLoss` keeps for one image.

    Args:
        target: [n, 5]; priors: [P, 4]; conf: [P, C] logits of the image.
    """
    matches = match_priors(target, priors, conf.shape[-1], iou_threshold, variances)
    return mine_given_matches(matches, target, priors, conf, neg_pos_ratio, iou_threshold, variances)


def mine_given_matches(matches: PriorMatches, target: torch.Tensor, priors: torch.Tensor, conf: torch.Tensor,
          neg_pos_ratio: float, iou_threshold: float, variances: Sequence[float]) -> MinedNegatives:
    """`mine_negatives` given the image's `match_priors` (saves matching twice)."""
    num_classes = conf.shape[-1]
    criterion = MultiBoxLoss(num_classes, iou_threshold, neg_pos_ratio, variances)
    conf = conf.float()[None]  # (P, C) -> (1, P, C)
    mined = criterion.mine_negatives(conf, matches.positive[None])[0]  # [P] bool
    log_probs = F.log_softmax(conf[0], dim=-1)  # [P, C]
    background_loss = -log_probs[:, 0]  # what the mining ranks
    indices = mined.nonzero().squeeze(1)
    indices = indices[background_loss[indices].argsort(descending=True)]
    top_score, top_label = log_probs[indices, 1:].exp().max(dim=1)  # [N] each
    boxes = target[:, :4].float()
    if len(boxes):
        iou = pairwise_iou(boxes, cxcywh_to_xyxy(priors[indices].float())).max(dim=0).values
    else:
        iou = torch.zeros(len(indices))
    return MinedNegatives(indices, background_loss[indices], iou, top_label, top_score,
                          int(matches.positive.sum()))
