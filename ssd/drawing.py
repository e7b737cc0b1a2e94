"""Drawing shared by the predictor's pictures and the visualisations: class colours, labels
on filled text boxes, panels with titles laid out in rows and grids, and saving a picture.

    canvas = draw_detections(image, detections)            # boxes with "class score" labels
    draw_label(canvas, "dog 0.93", (x, y), class_colour(11), font_scale=0.5)
    picture = titled(grid([panel_a, panel_b, panel_c], columns=2), ["a title line"])
    save_image("out/picture.png", picture)                 # atomic, ordinary permissions

Every canvas is a uint8 [H, W, 3] BGR array; functions that draw "in place" modify it.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ssd.fileio import atomic_write
from ssd.images import ImageInput, load_image

Detection = dict[str, Any]  # {"box": [x1, y1, x2, y2], "score": float, "label": int, "class_name": str}

LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (20, 20, 20)  # dark text of titles
GOLDEN_RATIO_CONJUGATE = 0.618033988749895  # hue step between consecutive labels
JPEG_QUALITY = 92


# ------------------------------------------------------------------- colours and labels
def class_colour(label: int) -> tuple[int, int, int]:
    """A saturated BGR colour per label; hues step by the golden ratio, so neighbouring
    labels differ strongly."""
    hue = (label * GOLDEN_RATIO_CONJUGATE + 0.08) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(blue * 255), int(green * 255), int(red * 255)


def draw_detections(image: ImageInput, detections: Sequence[Detection]) -> np.ndarray:
    """Boxes with "class score" labels in each class's colour, on a copy of `image`.

    Line width and text size follow the image size; a label sits above its box, or inside
    it at the top when there is no room, and is shifted to stay inside the image. The
    highest score is drawn last (on top).

    Returns:
        uint8 [H, W, 3] BGR (grey / 16-bit / BGRA inputs converted as `load_image`).
    """
    canvas = load_image(image).copy()
    height, width = canvas.shape[:2]
    side = min(height, width)
    thickness = max(1, round(side / 200))
    font_scale = max(0.35, side / 900)
    for det in sorted(detections, key=lambda d: d["score"]):
        colour = class_colour(int(det["label"]))
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        x1, x2 = np.clip([x1, x2], 0, width - 1)
        y1, y2 = np.clip([y1, y2], 0, height - 1)
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), colour, thickness)
        text = f"{det['class_name']} {det['score']:.2f}"
        draw_label(canvas, text, (int(x1), int(y1)), colour, font_scale, thickness)
    return canvas


def draw_label(canvas: np.ndarray, text: str, anchor: tuple[int, int],
               colour: tuple[int, int, int], font_scale: float, thickness: int = 1) -> None:
    """Text on a filled `colour` rectangle whose bottom-left is at `anchor` (x, y), or whose
    top-left is, when the text would leave the top of the image; kept inside the image.
    Draws in place."""
    box_w, box_h = label_size(text, font_scale, thickness)
    height, width = canvas.shape[:2]
    x, y = anchor
    top = y - box_h if y - box_h >= 0 else y  # above the box, else inside it
    top = int(np.clip(top, 0, max(0, height - box_h)))
    left = int(np.clip(x, 0, max(0, width - box_w)))
    draw_text_box(canvas, text, (left, top), colour, font_scale, thickness)


def label_size(text: str, font_scale: float, thickness: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of the rectangle `draw_text_box` fills for `text`."""
    (text_w, text_h), baseline = cv2.getTextSize(text, LABEL_FONT, font_scale,
                                                 max(1, thickness // 2))
    pad = max(1, text_h // 4)
    return text_w + 2 * pad, text_h + baseline + 2 * pad


def draw_text_box(canvas: np.ndarray, text: str, top_left: tuple[int, int],
                  colour: tuple[int, int, int], font_scale: float, thickness: int = 1) -> None:
    """`text` on a filled `colour` rectangle with its top-left corner at `top_left`, in black or
    white, whichever reads better on `colour`. Draws in place."""
    text_thickness = max(1, thickness // 2)
    (text_w, text_h), baseline = cv2.getTextSize(text, LABEL_FONT, font_scale, text_thickness)
    pad = max(1, text_h // 4)
    left, top = top_left
    cv2.rectangle(canvas, (left, top), (left + text_w + 2 * pad, top + text_h + baseline + 2 * pad),
                  colour, cv2.FILLED)
    blue, green, red = colour
    ink = (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (left + pad, top + pad + text_h), LABEL_FONT, font_scale, ink,
                text_thickness, cv2.LINE_AA)


# ------------------------------------------------------------------------ layout
def legend(canvas: np.ndarray, texts: Sequence[str], colours: Sequence[tuple[int, int, int]]) -> None:
    """Coloured labels in a row along the bottom of `canvas` (wrapping), in place."""
    x, y = 4, canvas.shape[0] - 4
    for text, colour in zip(texts, colours):
        (width, _), _ = cv2.getTextSize(text, LABEL_FONT, 0.45, 1)
        if x + width + 8 > canvas.shape[1]:
            x, y = 4, y - 20
        draw_label(canvas, text, (x, y), colour, 0.45)
        x += width + 12


def place_labels(canvas: np.ndarray, items: Sequence[tuple[str, np.ndarray, tuple[int, int, int]]],
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


def titled(panel: np.ndarray, lines: Sequence[str], scale: float = 0.5) -> np.ndarray:
    """`panel` under a white strip holding `lines` of dark text (widened, white on the right,
    when a line is longer than the panel)."""
    line_height = int(round(40 * scale))
    text_width = max(cv2.getTextSize(line, LABEL_FONT, scale, 1)[0][0] for line in lines) + 10
    if text_width > panel.shape[1]:
        panel = np.pad(panel, ((0, 0), (0, text_width - panel.shape[1]), (0, 0)),
                       constant_values=255)
    strip = np.full((line_height * len(lines) + 6, panel.shape[1], 3), 255, np.uint8)
    for number, line in enumerate(lines, start=1):
        cv2.putText(strip, line, (5, line_height * number - int(line_height * 0.25)), LABEL_FONT,
                    scale, INK, 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def panel_row(panels: Sequence[np.ndarray], gap: int = 10) -> np.ndarray:
    """Panels side by side, top-aligned, each keeping its own width."""
    height = max(panel.shape[0] for panel in panels)
    width = sum(panel.shape[1] for panel in panels) + gap * (len(panels) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    left = 0
    for panel in panels:
        canvas[:panel.shape[0], left:left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return canvas


def panel_grid(panels: Sequence[np.ndarray], columns: int, gap: int = 10) -> np.ndarray:
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


# -------------------------------------------------------------------------- files
def save_image(path: str | Path, canvas: np.ndarray) -> Path:
    """Write `canvas` (uint8 [H, W, 3] BGR) as PNG or JPEG (by the suffix of `path`) through
    `ssd.fileio.atomic_write` (complete or absent, mode 0666 minus the umask); parent folders
    are made. Returns `path`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{path}: expected a .png, .jpg or .jpeg file name")
    options = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix != ".png" else []
    ok, data = cv2.imencode(suffix, canvas, options)
    if not ok:
        raise ValueError(f"OpenCV could not encode {path} from an array of shape {list(canvas.shape)}")
    return atomic_write(path, data.tobytes())
