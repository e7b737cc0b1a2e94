"""The first training batch as the model sees it, drawn: each augmented image de-normalised
(the mean added back, RGB turned back into BGR) with its boxes and class names, in a grid.

    save_batch_picture(images, targets, class_names, mean, "runs/shapes/train_batch0.jpg")

A look at this picture shows at once whether the augmentation, the box coordinates and the
class names fit together (boxes off their objects, mirrored labels, wrong classes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssd.drawing import class_colour, draw_label, panel_grid, save_image

MAX_IMAGES = 16  # images drawn from the batch
FIRST_BATCH_NAME = "train_batch0.jpg"
LABEL_FONT_SCALE = 0.35


def denormalise(image: torch.Tensor, mean: Sequence[float]) -> np.ndarray:
    """One network input -> the picture it was made from.

    Args:
        image: float [3, S, S], RGB minus the mean (the training transform's output).
        mean: the per-channel mean in BGR order (data.mean).

    Returns:
        uint8 [S, S, 3] BGR.
    """
    rgb = image.detach().float().cpu().permute(1, 2, 0).numpy()  # (3, S, S) -> (S, S, 3)
    rgb = rgb + np.asarray(mean, dtype=np.float32)[::-1]
    return np.ascontiguousarray(np.clip(np.rint(rgb[..., ::-1]), 0, 255).astype(np.uint8))


def draw_targets(canvas: np.ndarray, target: torch.Tensor, class_names: Sequence[str]) -> np.ndarray:
    """Draw one image's target boxes with their class names on `canvas` (in place).

    Args:
        canvas: uint8 [S, S, 3] BGR.
        target: [n, 5] rows of (xmin, ymin, xmax, ymax normalised, 0-based label).
    """
    import cv2

    height, width = canvas.shape[:2]
    for *box, label in target.detach().float().cpu().tolist():
        x1, y1, x2, y2 = (int(round(value * size))
                          for value, size in zip(box, (width, height, width, height)))
        colour = class_colour(int(label))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 1)
        name = class_names[int(label)] if 0 <= int(label) < len(class_names) else f"#{int(label)}"
        draw_label(canvas, name, (x1, y1), colour, LABEL_FONT_SCALE)
    return canvas


def batch_picture(images: torch.Tensor, targets: Sequence[torch.Tensor],
                  class_names: Sequence[str], mean: Sequence[float],
                  max_images: int = MAX_IMAGES) -> np.ndarray:
    """The first `max_images` images of a batch [B, 3, S, S] with their targets (B x [n, 5]),
    in a square-ish grid. Returns uint8 [H, W, 3] BGR."""
    count = min(len(images), max_images)
    panels = [draw_targets(denormalise(images[i], mean), targets[i], class_names)
              for i in range(count)]
    return panel_grid(panels, columns=math.ceil(math.sqrt(count)))


def save_batch_picture(images: torch.Tensor, targets: Sequence[torch.Tensor],
                       class_names: Sequence[str], mean: Sequence[float],
                       path: str | Path) -> Path:
    """Write `batch_picture` to `path` (.jpg or .png, atomically). Returns `path`."""
    return save_image(path, batch_picture(images, targets, class_names, mean))
