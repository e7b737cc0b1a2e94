"""Pictures of what the loss sees: default boxes, prior matching and hard negative mining.

    canvas = draw_priors(image, priors, feature_maps, aspect_ratios, image_size)
    canvas = draw_matches(image, target, priors, class_names, iou_threshold=0.5)
    canvas = draw_mining(image, target, priors, conf, class_names, neg_pos_ratio=3)
    save_png("out/mining.png", canvas)

Everything is drawn in the network's input frame: the image squashed to a square, as the
network sees it, where the default boxes and the normalised ground truth live (IoU is computed
there too). The numbers come from the training code itself: `ssd.loss.prepare_targets` and
`assign_targets` (positives and their labels), `ssd.box_utils.match` (the matched object and
its IoU, the call `assign_targets` makes) and `MultiBoxLoss.mine_negatives` (the negatives the
confidence loss keeps), so a picture shows exactly what training does (seed 000).

Inputs: `image` is uint8 [H, W, 3] BGR (see `ssd.predictor.load_image`); `target` is a
Tensor[n, 5] (xmin, ymin, xmax, ymax normalised, 0-based label) as the loss takes; `priors` is
Tensor[P, 4] (cx, cy, w, h) normalised; `conf` is Tensor[P, C] logits of one image.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ssd.box_utils import cxcywh_to_xyxy, match, pairwise_iou
from ssd.data import BaseTransform, parse_voc_xml
from ssd.data.common import sanitize_boxes
from ssd.fileio import atomic_write
from ssd.loss import MultiBoxLoss, assign_targets, prepare_targets
from ssd.predictor import class_colour, draw_label, draw_text_box, label_size, network_input
from ssd.priors import boxes_per_location

DISPLAY = 400  # side of a panel showing the network input, pixels
TILE = 170  # side of a mining tile
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (20, 20, 20)
NEGATIVE_COLOUR = (0, 230, 0)  # BGR green, as in the seed article
IGNORED_COLOUR = (200, 200, 200)  # difficult objects, which the loss does not see
ANCHOR_COLOURS = [(0, 0, 230), (0, 170, 255), (230, 0, 160), (255, 120, 0), (0, 200, 0),
                  (160, 0, 255), (255, 255, 0), (0, 255, 255)]  # BGR, one per box shape


# ----------------------------------------------------------------------------- inputs
def annotation_path(image_path: str | Path) -> Path:
    """The VOC annotation of an image: <root>/JPEGImages/<id>.jpg -> <root>/Annotations/<id>.xml."""
    image_path = Path(image_path)
    return image_path.parent.parent / "Annotations" / f"{image_path.stem}.xml"


def read_voc_target(xml_path: str | Path, class_names: Sequence[str],
                    keep_difficult: bool = False) -> torch.Tensor:
    """A VOC XML file as the loss's target: Tensor[n, 5] = (xmin, ymin, xmax, ymax, label).

    Boxes are normalised as the data set does, ``(xml - 1) / width or height`` after clipping
    to the image; difficult objects are left out unless `keep_difficult` (as in training).

    Raises:
        ssd.data.DataError: missing file, bad XML, unknown class (the message names the file).
    """
    target, difficult = read_voc_objects(xml_path, class_names)
    return target if keep_difficult else target[~difficult]


def read_voc_objects(xml_path: str | Path, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object of a VOC XML file: (target Tensor[n, 5] as `read_voc_target`, difficult
    BoolTensor[n])."""
    parsed = parse_voc_xml(xml_path, {name: label for label, name in enumerate(class_names)})
    boxes, valid, _ = sanitize_boxes(parsed.boxes, 1.0, parsed.width, parsed.height)
    scale = np.array([parsed.width, parsed.height] * 2, dtype=np.float32)
    normalised = (boxes[valid] - 1.0) / scale  # [n, 4]
    labels = parsed.labels[valid].astype(np.float32)[:, None]  # [n] -> [n, 1]
    target = torch.from_numpy(np.concatenate([normalised, labels], axis=1))  # [n, 5]
    return target, torch.from_numpy(parsed.difficult[valid])


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


def save_png(path: str | Path, canvas: np.ndarray) -> Path:
    """Write `canvas` (uint8 [H, W, 3] BGR) as a PNG, atomically; parent folders are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError(f"OpenCV could not encode a PNG of shape {list(canvas.shape)}")
    return atomic_write(path, data.tobytes())


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
                 iou_threshold: float = 0.5, variances: Sequence[float] = (0.1, 0.2)) -> PriorMatches:
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
                   neg_pos_ratio: float = 3, iou_threshold: float = 0.5,
                   variances: Sequence[float] = (0.1, 0.2)) -> MinedNegatives:
    """The negatives `MultiBoxLoss` keeps for one image.

    Args:
        target: [n, 5]; priors: [P, 4]; conf: [P, C] logits of the image.
    """
    matches = match_priors(target, priors, conf.shape[-1], iou_threshold, variances)
    return _mine(matches, target, priors, conf, neg_pos_ratio, iou_threshold, variances)


def _mine(matches: PriorMatches, target: torch.Tensor, priors: torch.Tensor, conf: torch.Tensor,
          neg_pos_ratio: float, iou_threshold: float, variances: Sequence[float]) -> MinedNegatives:
    """`mine_negatives` given the image's `match_priors`."""
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


# ----------------------------------------------------------------------- pictures
def draw_priors(image: np.ndarray, priors: torch.Tensor, feature_maps: Sequence[int],
                aspect_ratios: Sequence[Sequence[float]], image_size: int,
                layer: int | None = None, display: int = DISPLAY) -> np.ndarray:
    """The default boxes of the centre cell of every feature map (or of `layer`), one panel
    per map, over the network's view of the image with that map's cell grid.

    Returns:
        uint8 [H, W, 3] BGR picture.
    """
    layers = range(len(feature_maps)) if layer is None else [layer]
    if layer is not None:
        location_indices(feature_maps, aspect_ratios, layer, 0, 0)  # checks the layer exists
        display = display * 3 // 2  # a single panel: larger
    panels = [_prior_panel(image, priors, feature_maps, aspect_ratios, image_size, k, display)
              for k in layers]
    which = "each map" if layer is None else f"layer {layer}"
    title = [f"default boxes: {len(priors)} priors on {len(feature_maps)} feature maps, input "
             f"{image_size}x{image_size}", f"the boxes of the centre cell of {which}"]
    return _titled(_grid(panels, columns=min(3, len(panels))), title, scale=0.6)


def _prior_panel(image: np.ndarray, priors: torch.Tensor, feature_maps: Sequence[int],
                 aspect_ratios: Sequence[Sequence[float]], image_size: int, layer: int,
                 display: int) -> np.ndarray:
    """One feature map: its cell grid, its centre cell shaded, the cell's default boxes."""
    size = feature_maps[layer]
    row = col = (size - 1) // 2
    indices = location_indices(feature_maps, aspect_ratios, layer, row, col)
    cell = priors[indices].float()  # [A, 4] cx, cy, w, h
    canvas = _draw_cell_grid(_view(image, display), size, row, col)
    boxes = _pixel_boxes(cxcywh_to_xyxy(cell), display)
    for anchor, box in enumerate(boxes):
        colour = ANCHOR_COLOURS[anchor % len(ANCHOR_COLOURS)]
        cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), colour, 2, cv2.LINE_AA)
    sizes = [f"{w * image_size:.0f}x{h * image_size:.0f}" for w, h in cell[:, 2:].tolist()]
    _legend(canvas, sizes, [ANCHOR_COLOURS[a % len(ANCHOR_COLOURS)] for a in range(len(sizes))])
    centre = cell[0, :2] * image_size
    lines = [f"layer {layer}: {size}x{size} map, {len(indices)} boxes per cell",
             f"cell ({row}, {col}), centre ({centre[0]:.0f}, {centre[1]:.0f}) px; sizes w x h px"]
    return _titled(canvas, lines)


def draw_matches(image: np.ndarray, target: torch.Tensor, priors: torch.Tensor,
                 class_names: Sequence[str], iou_threshold: float = 0.5,
                 layers: torch.Tensor | None = None, display: int = DISPLAY,
                 max_objects: int = 8, ignored: torch.Tensor | None = None) -> np.ndarray:
    """The ground truth and the positive default boxes matched to each object, with IoU.

    The first panel shows every object with its positives (in the object's class colour);
    then one panel per object (at most `max_objects`) with its positives coloured and
    labelled by IoU; "*" marks a positive below `iou_threshold` (the object's best prior).

    Args:
        layers: Int64Tensor[P] feature map of each prior (`prior_layers`), for the titles.
        ignored: Tensor[m, 5] objects the loss does not see (difficult ones), drawn in grey.
    """
    matches = match_priors(target, priors, len(class_names) + 1, iou_threshold)
    boxes = cxcywh_to_xyxy(priors.float())  # [P, 4]
    overview = _view(image, display, ignored)
    _draw_positives(overview, target, matches, boxes)
    _draw_targets(overview, target, class_names, display, thickness=3)
    positives = int(matches.positive.sum())
    panels = [_titled(overview, [f"{_count(len(target), 'object')}, "
                                 f"{_count(positives, 'positive prior')}",
                                 f"IoU threshold {iou_threshold}" + _ignored_note(ignored)])]
    for obj in range(min(len(target), max_objects)):
        panels.append(_object_panel(image, target, obj, matches, boxes, class_names, layers,
                                    display, ignored))
    more = f"; {len(target) - max_objects} more objects not shown" if len(target) > max_objects else ""
    title = [f"prior matching: positives = IoU >= {iou_threshold} with an object, plus each "
             f"object's best prior (*){more}"]
    return _titled(_grid(panels, columns=min(3, len(panels))), title, scale=0.6)


def _object_panel(image, target, obj, matches: PriorMatches, boxes, class_names, layers,
                  display, ignored) -> np.ndarray:
    """One object and its positive priors, coloured by IoU (viridis), labelled with it."""
    canvas = _view(image, display, ignored)
    mine = (matches.positive & (matches.gt_index == obj)).nonzero().squeeze(1)
    mine = mine[matches.iou[mine].argsort()]  # highest IoU drawn last, on top
    ious = matches.iou[mine]
    colours = _iou_colours(ious)
    pixel = _pixel_boxes(boxes[mine], display)
    for colour, box in zip(colours, pixel):
        cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), colour, 2, cv2.LINE_AA)
    texts = [f"{iou:.2f}{'*' if bool(forced) else ''}"
             for iou, forced in zip(ious.tolist(), matches.forced[mine].tolist())]
    _draw_targets(canvas, target[obj:obj + 1], class_names, display, thickness=3, labels=False)
    _place_labels(canvas, list(zip(texts, pixel, colours))[::-1], 0.38)  # best IoU first
    name = class_names[int(target[obj, 4])]
    if len(mine):
        used = sorted(set(layers[mine].tolist())) if layers is not None else []
        lines = [f"{name} (object {obj}): {_count(len(mine), 'positive prior')}",
                 f"IoU {float(ious.min()):.2f}-{float(ious.max()):.2f}"
                 + (f", layers {', '.join(map(str, used))}" if used else "")]
    else:
        lines = [f"{name} (object {obj}): no positive prior",
                 "(its best prior went to a later object)"]
    return _titled(canvas, lines)


def draw_mining(image: np.ndarray, target: torch.Tensor, priors: torch.Tensor,
                conf: torch.Tensor, class_names: Sequence[str], neg_pos_ratio: float = 3,
                iou_threshold: float = 0.5, layers: torch.Tensor | None = None,
                image_size: int = 300, max_tiles: int = 36, note: str = "",
                ignored: torch.Tensor | None = None) -> np.ndarray:
    """The negatives hard negative mining selects for this image, next to the ground truth.

    Left: the ground truth with the positive priors, and every mined negative over the image.
    Right: a grid of the hardest `max_tiles` negatives, one per tile (green box, with the
    objects in their colours), captioned with rank, background loss, largest IoU with an
    object, layer and size, and the class the model leans to.

    Args:
        conf: [P, C] logits of the image under the weights being inspected.
        note: a line for the title (e.g. which weights).
        ignored: Tensor[m, 5] objects the loss does not see (difficult ones), drawn in grey.
    """
    if conf.shape[-1] != len(class_names) + 1:
        raise ValueError(f"conf has {conf.shape[-1]} classes but there are {len(class_names)} "
                         "class names (+ background)")
    matches = match_priors(target, priors, conf.shape[-1], iou_threshold)
    # The variances only shape the localisation targets, which mining does not use.
    mined = _mine(matches, target, priors, conf, neg_pos_ratio, iou_threshold, (0.1, 0.2))
    boxes = cxcywh_to_xyxy(priors.float())  # [P, 4]
    left = _grid([_truth_panel(image, target, matches, boxes, class_names, ignored),
                  _negatives_panel(image, target, mined, boxes, class_names, ignored)], columns=1)
    tiles = [_mining_tile(image, target, mined, rank, boxes, class_names, layers, image_size,
                          ignored)
             for rank in range(min(len(mined.indices), max_tiles))]
    shown = f"the {len(tiles)} hardest" if len(tiles) < len(mined.indices) else "all"
    if tiles:
        right = _titled(_grid(tiles, columns=max(1, min(6, math.ceil(math.sqrt(len(tiles) * 1.5))))),
                        [f"{shown} of {len(mined.indices)} mined negatives, hardest first"])
    else:
        right = _titled(np.full((TILE, 3 * TILE, 3), 255, np.uint8),
                        ["no negatives mined (no positive priors)"])
    loss = mined.loss
    span = f"; background loss {float(loss.min()):.2f}-{float(loss.max()):.2f}" if len(loss) else ""
    title = [f"hard negative mining: {_count(mined.num_positive, 'positive')} -> "
             f"{_count(len(mined.indices), 'negative')} kept (ratio {neg_pos_ratio:g}) of "
             f"{len(priors)} priors{span}"]
    if note:
        title.append(note)
    return _titled(_row([left, right]), title, scale=0.6)


def _truth_panel(image, target, matches: PriorMatches, boxes, class_names, ignored) -> np.ndarray:
    """The objects (labelled) and their positive priors (thin); boxes [P, 4] xyxy."""
    canvas = _view(image, DISPLAY, ignored)
    _draw_positives(canvas, target, matches, boxes)
    _draw_targets(canvas, target, class_names, DISPLAY, thickness=3)
    return _titled(canvas, [f"ground truth: {_count(len(target), 'object')}"
                            + _ignored_note(ignored),
                            f"thin: the {_count(int(matches.positive.sum()), 'positive prior')}"])


def _negatives_panel(image, target, mined: MinedNegatives, boxes, class_names,
                     ignored) -> np.ndarray:
    """Every mined negative over the image, with the objects."""
    canvas = _view(image, DISPLAY, ignored)
    _draw_targets(canvas, target, class_names, DISPLAY, thickness=2, labels=False)
    pixel = _pixel_boxes(boxes[mined.indices], DISPLAY)
    for box in pixel[::-1]:  # hardest drawn last, on top
        cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), NEGATIVE_COLOUR, 1, cv2.LINE_AA)
    return _titled(canvas, [f"all {len(mined.indices)} mined negatives (green)",
                            "objects in their class colours"])


def _mining_tile(image, target, mined: MinedNegatives, rank, boxes, class_names, layers,
                 image_size, ignored) -> np.ndarray:
    """The negative of rank `rank` (0 = hardest) in green over the image, captioned."""
    index = int(mined.indices[rank])
    canvas = _view(image, TILE, ignored)
    _draw_targets(canvas, target, class_names, TILE, thickness=1, labels=False)
    box = _pixel_boxes(boxes[index:index + 1], TILE)[0]
    cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), (255, 255, 255), 4)
    cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), NEGATIVE_COLOUR, 2)
    width, height = ((boxes[index, 2:] - boxes[index, :2]) * image_size).tolist()
    layer = f"L{int(layers[index])} " if layers is not None else ""
    lines = [f"#{rank + 1}  loss {float(mined.loss[rank]):.2f}",
             f"IoU {float(mined.iou[rank]):.2f}  {layer}{width:.0f}x{height:.0f}",
             f"{class_names[int(mined.top_label[rank])]} {float(mined.top_score[rank]):.2f}"]
    return _titled(canvas, lines, scale=0.4)


# ------------------------------------------------------------------ drawing helpers
def _view(image: np.ndarray, display: int, ignored: torch.Tensor | None = None) -> np.ndarray:
    """The image squashed to display x display (the network's square view), a new array,
    with the `ignored` objects [m, 5] in thin grey boxes."""
    shrinking = max(image.shape[:2]) > display
    canvas = cv2.resize(image, (display, display),
                        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    for box in _pixel_boxes(ignored[:, :4], display) if ignored is not None else []:
        cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), IGNORED_COLOUR, 1)
        if display >= DISPLAY:
            draw_label(canvas, "difficult", (int(box[0]), int(box[1])), IGNORED_COLOUR, 0.35)
    return canvas


def _count(number: int, noun: str) -> str:
    """'1 object', '3 objects'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _ignored_note(ignored: torch.Tensor | None) -> str:
    if ignored is None or not len(ignored):
        return ""
    return f" (+ {len(ignored)} difficult, grey: not used)"


def _pixel_boxes(boxes: torch.Tensor, display: int) -> np.ndarray:
    """Normalised xyxy Tensor[n, 4] -> int ndarray [n, 4] pixel corners inside the panel."""
    pixels = (boxes.float().clamp(0, 1) * display).round().clamp(max=display - 1)
    return pixels.to(torch.int64).numpy().reshape(-1, 4)


def _draw_positives(canvas: np.ndarray, target: torch.Tensor, matches: PriorMatches,
                    boxes: torch.Tensor) -> None:
    """Thin boxes of the positive priors (boxes [P, 4] xyxy), in their object's class colour."""
    positives = matches.positive.nonzero().squeeze(1)
    labels = target[matches.gt_index[positives], 4].long().tolist()
    for label, box in zip(labels, _pixel_boxes(boxes[positives], canvas.shape[0])):
        cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), class_colour(label), 1, cv2.LINE_AA)


def _draw_targets(canvas: np.ndarray, target: torch.Tensor, class_names: Sequence[str],
                  display: int, thickness: int, labels: bool = True) -> None:
    """Ground-truth boxes in their class colours (with the class name when `labels`)."""
    for box, label in zip(_pixel_boxes(target[:, :4], display), target[:, 4].long().tolist()):
        colour = class_colour(label)
        cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), colour, thickness, cv2.LINE_AA)
        if labels:
            draw_label(canvas, class_names[label], (int(box[0]), int(box[1])), colour, 0.45)


def _draw_cell_grid(canvas: np.ndarray, size: int, row: int, col: int) -> np.ndarray:
    """The size x size cell grid over `canvas` (faint lines), cell (row, col) shaded."""
    display = canvas.shape[0]
    overlay = canvas.copy()
    edges = np.rint(np.linspace(0, display - 1, size + 1)).astype(int)
    for edge in edges:  # one line per grid line, not per pixel
        cv2.line(overlay, (int(edge), 0), (int(edge), display - 1), (255, 255, 255), 1)
        cv2.line(overlay, (0, int(edge)), (display - 1, int(edge)), (255, 255, 255), 1)
    cv2.rectangle(overlay, (int(edges[col]), int(edges[row])),
                  (int(edges[col + 1]), int(edges[row + 1])), (255, 255, 255), cv2.FILLED)
    return cv2.addWeighted(overlay, 0.45, canvas, 0.55, 0)


def _legend(canvas: np.ndarray, texts: Sequence[str], colours: Sequence[tuple[int, int, int]]) -> None:
    """Coloured labels in a row along the bottom of `canvas` (wrapping), in place."""
    x, y = 4, canvas.shape[0] - 4
    for text, colour in zip(texts, colours):
        (width, _), _ = cv2.getTextSize(text, FONT, 0.45, 1)
        if x + width + 8 > canvas.shape[1]:
            x, y = 4, y - 20
        draw_label(canvas, text, (x, y), colour, 0.45)
        x += width + 12


def _place_labels(canvas: np.ndarray, items: Sequence[tuple[str, np.ndarray, tuple[int, int, int]]],
                  font_scale: float) -> int:
    """Label boxes without covering earlier labels: each (text, box [4] pixels, colour) takes
    the first free spot of above / inside top / inside bottom / below its box, or is left out.

    Returns the number of labels drawn.
    """
    height, width = canvas.shape[:2]
    taken: list[tuple[int, int, int, int]] = []
    for text, (x1, y1, x2, y2), colour in items:
        w, h = label_size(text, font_scale)
        spots = [(x1, y1 - h), (x1, y1), (x2 - w, y2 - h), (x2 - w, y2), (x2 - w, y1 - h)]
        for left, top in spots:
            left, top = int(np.clip(left, 0, width - w)), int(np.clip(top, 0, height - h))
            rect = (left, top, left + w, top + h)
            if not any(_overlap(rect, other) for other in taken):
                draw_text_box(canvas, text, (left, top), colour, font_scale)
                taken.append(rect)
                break
    return len(taken)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _iou_colours(ious: torch.Tensor) -> list[tuple[int, int, int]]:
    """Viridis colours for IoU values: <= 0.4 (dark blue) ... >= 0.9 (yellow)."""
    levels = ((ious.float() - 0.4) / 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    mapped = cv2.applyColorMap(levels.numpy().reshape(-1, 1), cv2.COLORMAP_VIRIDIS)  # [n, 1, 3]
    return [tuple(int(v) for v in colour) for colour in mapped.reshape(-1, 3)]


def _titled(panel: np.ndarray, lines: Sequence[str], scale: float = 0.5) -> np.ndarray:
    """`panel` under a white strip holding `lines` of dark text (widened, white on the right,
    when a line is longer than the panel)."""
    line_height = int(round(40 * scale))
    text_width = max(cv2.getTextSize(line, FONT, scale, 1)[0][0] for line in lines) + 10
    if text_width > panel.shape[1]:
        panel = np.pad(panel, ((0, 0), (0, text_width - panel.shape[1]), (0, 0)),
                       constant_values=255)
    strip = np.full((line_height * len(lines) + 6, panel.shape[1], 3), 255, np.uint8)
    for number, line in enumerate(lines, start=1):
        cv2.putText(strip, line, (5, line_height * number - int(line_height * 0.25)), FONT,
                    scale, INK, 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def _row(panels: Sequence[np.ndarray], gap: int = 10) -> np.ndarray:
    """Panels side by side, top-aligned, each keeping its own width."""
    height = max(panel.shape[0] for panel in panels)
    width = sum(panel.shape[1] for panel in panels) + gap * (len(panels) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    left = 0
    for panel in panels:
        canvas[:panel.shape[0], left:left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return canvas


def _grid(panels: Sequence[np.ndarray], columns: int, gap: int = 10) -> np.ndarray:
    """Panels (any sizes) in a white grid, row by row, `columns` per row."""
    height = max(panel.shape[0] for panel in panels)
    width = max(panel.shape[1] for panel in panels)
    rows = math.ceil(len(panels) / columns)
    canvas = np.full((rows * height + (rows + 1) * gap, columns * width + (columns + 1) * gap, 3),
                     255, np.uint8)
    for number, panel in enumerate(panels):
        row, col = divmod(number, columns)
        top, left = gap + row * (height + gap), gap + col * (width + gap)
        canvas[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
    return canvas
