"""Pictures of what the loss sees: default boxes, prior matching and hard negative mining.

    canvas = draw_priors(image, priors, feature_maps, aspect_ratios, image_size)
    canvas = draw_matches(image, target, priors, class_names, iou_threshold=0.5)
    canvas = draw_mining(image, target, priors, conf, class_names, neg_pos_ratio=3)
    save_image("out/mining.png", canvas)                   # from ssd.drawing

Everything is drawn in the network's input frame: the image squashed to a square, as the
network sees it, where the default boxes and the normalised ground truth live (IoU is computed
there too). The numbers are `ssd.analysis`'s, i.e. the training code's own, so a picture shows
exactly what training does; colours, labels and the panel layout are `ssd.drawing`'s.

Inputs: `image` is uint8 [H, W, 3] BGR (see `ssd.images.load_image`); `target` is a
Tensor[n, 5] (xmin, ymin, xmax, ymax normalised, 0-based label) as the loss takes; `priors` is
Tensor[P, 4] (cx, cy, w, h) normalised; `conf` is Tensor[P, C] logits of one image.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch

from ssd import defaults
from ssd.analysis import (
    MinedNegatives,
    PriorMatches,
    location_indices,
    match_priors,
    mine_given_matches,
)
from ssd.box_utils import cxcywh_to_xyxy
from ssd.drawing import (
    class_colour,
    draw_label,
    legend,
    panel_grid,
    panel_row,
    place_labels,
    titled,
)

DISPLAY = 400  # side of a panel showing the network input, pixels
TILE = 170  # side of a mining tile
NEGATIVE_COLOUR = (0, 230, 0)  # BGR green: the mined negatives
IGNORED_COLOUR = (200, 200, 200)  # difficult objects, which the loss does not see
ANCHOR_COLOURS = [(0, 0, 230), (0, 170, 255), (230, 0, 160), (255, 120, 0), (0, 200, 0),
                  (160, 0, 255), (255, 255, 0), (0, 255, 255)]  # BGR, one per box shape


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
    return titled(panel_grid(panels, columns=min(3, len(panels))), title, scale=0.6)


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
    legend(canvas, sizes, [ANCHOR_COLOURS[a % len(ANCHOR_COLOURS)] for a in range(len(sizes))])
    centre = cell[0, :2] * image_size
    lines = [f"layer {layer}: {size}x{size} map, {len(indices)} boxes per cell",
             f"cell ({row}, {col}), centre ({centre[0]:.0f}, {centre[1]:.0f}) px; sizes w x h px"]
    return titled(canvas, lines)


def draw_matches(image: np.ndarray, target: torch.Tensor, priors: torch.Tensor,
                 class_names: Sequence[str], iou_threshold: float = defaults.MATCH_IOU_THRESHOLD,
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
    panels = [titled(overview, [f"{_count(len(target), 'object')}, "
                                 f"{_count(positives, 'positive prior')}",
                                 f"IoU threshold {iou_threshold}" + _ignored_note(ignored)])]
    for obj in range(min(len(target), max_objects)):
        panels.append(_object_panel(image, target, obj, matches, boxes, class_names, layers,
                                    display, ignored))
    more = f"; {len(target) - max_objects} more objects not shown" if len(target) > max_objects else ""
    title = [f"prior matching: positives = IoU >= {iou_threshold} with an object, plus each "
             f"object's best prior (*){more}"]
    return titled(panel_grid(panels, columns=min(3, len(panels))), title, scale=0.6)


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
    place_labels(canvas, list(zip(texts, pixel, colours))[::-1], 0.38)  # best IoU first
    name = class_names[int(target[obj, 4])]
    if len(mine):
        used = sorted(set(layers[mine].tolist())) if layers is not None else []
        lines = [f"{name} (object {obj}): {_count(len(mine), 'positive prior')}",
                 f"IoU {float(ious.min()):.2f}-{float(ious.max()):.2f}"
                 + (f", layers {', '.join(map(str, used))}" if used else "")]
    else:
        lines = [f"{name} (object {obj}): no positive prior",
                 "(its best prior went to a later object)"]
    return titled(canvas, lines)


def draw_mining(image: np.ndarray, target: torch.Tensor, priors: torch.Tensor,
                conf: torch.Tensor, class_names: Sequence[str], neg_pos_ratio: float = defaults.NEG_POS_RATIO,
                iou_threshold: float = defaults.MATCH_IOU_THRESHOLD, layers: torch.Tensor | None = None,
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
    mined = mine_given_matches(matches, target, priors, conf, neg_pos_ratio, iou_threshold,
                               defaults.VARIANCES)
    boxes = cxcywh_to_xyxy(priors.float())  # [P, 4]
    left = panel_grid([_truth_panel(image, target, matches, boxes, class_names, ignored),
                  _negatives_panel(image, target, mined, boxes, class_names, ignored)], columns=1)
    tiles = [_mining_tile(image, target, mined, rank, boxes, class_names, layers, image_size,
                          ignored)
             for rank in range(min(len(mined.indices), max_tiles))]
    shown = f"the {len(tiles)} hardest" if len(tiles) < len(mined.indices) else "all"
    if tiles:
        right = titled(panel_grid(tiles, columns=max(1, min(6, math.ceil(math.sqrt(len(tiles) * 1.5))))),
                        [f"{shown} of {len(mined.indices)} mined negatives, hardest first"])
    else:
        right = titled(np.full((TILE, 3 * TILE, 3), 255, np.uint8),
                        ["no negatives mined (no positive priors)"])
    loss = mined.loss
    span = f"; background loss {float(loss.min()):.2f}-{float(loss.max()):.2f}" if len(loss) else ""
    title = [f"hard negative mining: {_count(mined.num_positive, 'positive')} -> "
             f"{_count(len(mined.indices), 'negative')} kept (ratio {neg_pos_ratio:g}) of "
             f"{len(priors)} priors{span}"]
    if note:
        title.append(note)
    return titled(panel_row([left, right]), title, scale=0.6)


def _truth_panel(image, target, matches: PriorMatches, boxes, class_names, ignored) -> np.ndarray:
    """The objects (labelled) and their positive priors (thin); boxes [P, 4] xyxy."""
    canvas = _view(image, DISPLAY, ignored)
    _draw_positives(canvas, target, matches, boxes)
    _draw_targets(canvas, target, class_names, DISPLAY, thickness=3)
    return titled(canvas, [f"ground truth: {_count(len(target), 'object')}"
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
    return titled(canvas, [f"all {len(mined.indices)} mined negatives (green)",
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
    return titled(canvas, lines, scale=0.4)


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


def _iou_colours(ious: torch.Tensor) -> list[tuple[int, int, int]]:
    """Viridis colours for IoU values: <= 0.4 (dark blue) ... >= 0.9 (yellow)."""
    levels = ((ious.float() - 0.4) / 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    mapped = cv2.applyColorMap(levels.numpy().reshape(-1, 1), cv2.COLORMAP_VIRIDIS)  # [n, 1, 3]
    return [tuple(int(v) for v in colour) for colour in mapped.reshape(-1, 3)]
