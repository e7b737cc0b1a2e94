"""Image(s) in, detections in the original pixels out, and drawing them.

    p = Predictor("weights/ssd300.pth", device="cpu")      # config from the checkpoint or --config
    dets = p.predict("image.jpg")   # [{"box": [x1, y1, x2, y2], "score": 0.93, "label": 11,
                                    #   "class_name": "dog"}, ...] by decreasing score
    p.predict_batch(["a.jpg", bgr_array, ...])              # one list per image
    drawn = p.draw("image.jpg", dets)                        # uint8 BGR copy with boxes + labels

Images are paths or arrays (BGR, as OpenCV reads them). Grey [H, W] / [H, W, 1], BGRA
[H, W, 4] (alpha ignored), 16-bit and float images are converted to uint8 BGR first
(`load_image`). The network sees the image as the evaluation does (`BaseTransform`: resized to
S x S, mean subtracted); images more than twice the network input on a side are first
area-averaged down to that, so very large images do not alias. Boxes come back in the original
image's pixel frame: normalised coordinates times (width, height), clipped to [0, width] x
[0, height]; for a model trained on VOC XML boxes that is the 0-based frame (XML value - 1),
as `ssd.postprocess.scale_boxes` explains.

Inference runs under ``torch.inference_mode`` in the precision given (default: the fastest safe
one for the device, `ssd.precision.default_precision`: bf16 autocast + channels_last on
CPUs with native bf16, fp16 autocast on CUDA, else fp32).
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any, Sequence, Union

import cv2
import numpy as np
import torch
from torch import nn

from ssd.config import Config, load_config
from ssd.data import BaseTransform, class_names_for
from ssd.fileio import decode_image_file
from ssd.postprocess import build_postprocessor, scale_boxes
from ssd.precision import autocast_context, default_precision, prepare_for_inference, resolve_device

ImageInput = Union[str, Path, np.ndarray]
Detection = dict[str, Any]  # {"box": [x1, y1, x2, y2], "score": float, "label": int, "class_name": str}

REPO_ROOT = Path(__file__).resolve().parents[1]
LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_INPUT_RATIO = 2  # sides above this many network inputs are area-averaged down first
TRAIN_HINT = (
    "Train one with `python scripts/train.py --config configs/shapes.yaml` (a few minutes on a "
    "CPU; checkpoints go to runs/shapes/, e.g. runs/shapes/best.pth), or put published weights "
    "such as ssd300_mAP_77.43_v2.pth in weights/ (see weights/README.md for the files supported)."
)


# ------------------------------------------------------------------------------ images
def load_image(image: ImageInput) -> np.ndarray:
    """A path or an image array -> uint8 [H, W, 3] BGR (a uint8 BGR array is returned as is).

    Raises:
        FileNotFoundError: the path does not exist.
        IsADirectoryError: the path is a folder.
        ValueError: the file is not an image OpenCV can decode, or the array has an
            unsupported shape or dtype.
    """
    if isinstance(image, (str, Path)):
        return to_bgr_uint8(_read_image_file(Path(image)), source=str(image))
    if isinstance(image, np.ndarray):
        return to_bgr_uint8(image, source="the image array")
    raise TypeError(f"expected an image path or a numpy array, got {type(image).__name__}")


def _read_image_file(path: Path) -> np.ndarray:
    """Decode a file keeping its depth (8/16-bit, float) and grey/colour; alpha is dropped and
    the EXIF orientation applied (as image viewers show it)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file (scripts/predict.py "
                                "accepts folders)")
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    image = decode_image_file(path, keep_depth=True)
    if image is None:
        raise ValueError(f"Cannot read {path} as an image: the file is empty, corrupt or not an "
                         "image format OpenCV decodes (jpg, png, bmp, tif, webp, ...)")
    return image


def to_bgr_uint8(image: np.ndarray, source: str = "the image") -> np.ndarray:
    """Any supported image array -> uint8 [H, W, 3] BGR.

    Accepts [H, W] or [H, W, 1] grey, [H, W, 3] BGR, [H, W, 4] BGRA (alpha ignored); dtypes
    uint8, uint16 (/ 257, so 65535 -> 255), bool, and float (values in [0, 1] when the maximum
    is <= 1, else [0, 255]; clipped).
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # (H, W, 1) -> (H, W)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"{source} has shape {list(image.shape)}; expected [H, W] (grey), "
                         "[H, W, 1], [H, W, 3] (BGR) or [H, W, 4] (BGRA)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{source} is empty (shape {list(image.shape)})")
    image = _to_uint8(image, source)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _to_uint8(image: np.ndarray, source: str) -> np.ndarray:
    """Rescale the values of a uint8/uint16/bool/float array to uint8 (same shape)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)  # rounds and saturates
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        values = np.nan_to_num(image.astype(np.float32), nan=0.0)
        scale = 255.0 if float(values.max()) <= 1.0 else 1.0
        return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    raise ValueError(f"{source} has dtype {image.dtype}; expected uint8, uint16, bool or float")


def network_input(image: np.ndarray, transform: BaseTransform) -> np.ndarray:
    """uint8 [H, W, 3] BGR -> float32 [S, S, 3] as the evaluation feeds the network.

    Sides larger than MAX_INPUT_RATIO x S are first area-averaged down to that size (the
    final linear resize then averages at most 2x2 pixels, as for ordinary images).
    """
    height, width = image.shape[:2]
    limit = MAX_INPUT_RATIO * transform.size
    if max(height, width) > limit:
        image = cv2.resize(image, (min(width, limit), min(height, limit)),
                           interpolation=cv2.INTER_AREA)
    return transform(image)[0]


# ---------------------------------------------------------------------------- classes
def class_colour(label: int) -> tuple[int, int, int]:
    """A saturated BGR colour per label; hues step by the golden ratio, so neighbouring
    labels differ strongly."""
    hue = (label * 0.618033988749895 + 0.08) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(blue * 255), int(green * 255), int(red * 255)


# -------------------------------------------------------------------------- predictor
class Predictor:
    """A detector ready for images: model, config, pre- and post-processing, drawing.

    Args:
        weights: a weights file (this project's checkpoint, which carries its config, or a
            classic state_dict), or an SSD nn.Module (then `config` is required; the module
            is moved and set to eval mode in place).
        config: a Config or a YAML path; used when the weights carry no config (default
            configs/voc300.yaml). It also supplies the class names.
        device: "cpu", "cuda", "cuda:1", ... (default: CUDA when available).
        precision: "fp32", "bf16" or "fp16" (default: the fastest safe one for the device).
        score_threshold: minimum class score of a detection.
        nms_threshold: NMS IoU threshold (default: test.nms_threshold of the config).
        top_k: detections kept per image (default: test.top_k of the config).
        batch_size: images per forward pass in `predict_batch`.

    Attributes:
        model, cfg, device, precision, class_names (list[str], label order), postprocess.
    """

    def __init__(
        self,
        weights: str | Path | nn.Module,
        config: str | Path | Config | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float | None = None,
        top_k: int | None = None,
        batch_size: int = 8,
    ):
        _check_settings(score_threshold, nms_threshold, top_k, batch_size)
        self.device = resolve_device(device)
        self.precision = precision or default_precision(self.device)
        autocast_context(self.device, self.precision)  # raises for unknown / unsupported ones
        model, self.cfg = _load_model(weights, config)
        self.model = prepare_for_inference(model, self.device, self.precision)
        self.class_names = class_names_for(self.cfg)
        self.postprocess = build_postprocessor(
            self.cfg, conf_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k)
        self.transform = BaseTransform(self.cfg.model.image_size, self.cfg.data.mean)
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (f"Predictor({type(self.model).__name__}, {len(self.class_names)} classes, "
                f"input {self.transform.size}, device={self.device}, precision={self.precision}, "
                f"score_threshold={self.postprocess.conf_threshold})")

    def predict(self, image: ImageInput) -> list[Detection]:
        """Detections of one image (path or array), by decreasing score.

        Returns:
            [{"box": [x1, y1, x2, y2] (pixels of the original image, 0 <= x <= width,
            0 <= y <= height), "score": float, "label": int (0-based), "class_name": str}].
        """
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[list[Detection]]:
        """`predict` for several images, `batch_size` per forward pass; one list per image."""
        results: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            arrays = [load_image(image) for image in images[start:start + self.batch_size]]
            results += self._predict_arrays(arrays)
        return results

    def draw(self, image: ImageInput, detections: Sequence[Detection]) -> np.ndarray:
        """`draw_detections` of the image (not modified); returns uint8 [H, W, 3] BGR."""
        return draw_detections(image, detections)

    def _predict_arrays(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """uint8 [H, W, 3] BGR images -> detections in their pixels (one forward pass)."""
        inputs = np.stack([network_input(image, self.transform) for image in images])  # [B,S,S,3]
        found = self._forward(torch.from_numpy(inputs))
        return [
            self._to_pixel_detections(result, width=image.shape[1], height=image.shape[0])
            for result, image in zip(found, images)
        ]

    @torch.inference_mode()
    def _forward(self, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """inputs [B, S, S, 3] float32 -> `detect` results (boxes normalised)."""
        # (B, S, S, 3) -> (B, 3, S, S): the permuted view already has channels_last strides.
        images = inputs.to(self.device).permute(0, 3, 1, 2)
        fast = self.precision != "fp32"
        images = images.contiguous(
            memory_format=torch.channels_last if fast else torch.contiguous_format)
        with autocast_context(self.device, self.precision):
            loc, conf = self.model(images)
        return self.postprocess(loc, conf, self.model.priors)

    def _to_pixel_detections(
        self, found: dict[str, torch.Tensor], width: int, height: int
    ) -> list[Detection]:
        """One image's `detect` result -> detection dicts in its pixels (clipped to it)."""
        boxes = scale_boxes(found["boxes"].float().cpu(), width, height)  # [K, 4] pixels
        limits = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        return [
            {"box": box, "score": score, "label": label, "class_name": self.class_names[label]}
            for box, score, label in zip(boxes.tolist(), found["scores"].float().tolist(),
                                         found["labels"].tolist())
        ]


def _check_settings(score_threshold: float, nms_threshold: float | None, top_k: int | None,
                    batch_size: int) -> None:
    if not 0.0 <= score_threshold < 1.0:
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
    if nms_threshold is not None and not 0.0 < nms_threshold <= 1.0:
        raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _load_model(weights: str | Path | nn.Module, config: str | Path | Config | None):
    """(model, cfg) from a weights file or a module; see `Predictor`."""
    cfg = load_config(config) if isinstance(config, (str, Path)) else config
    if isinstance(weights, nn.Module):
        if cfg is None:
            raise ValueError("Predictor(model) needs the config the model was built from "
                             "(config=...)")
        return weights, cfg
    from ssd.weights import build_model_from_weights

    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"Weights file not found: {path}. {TRAIN_HINT}")
    return build_model_from_weights(path, cfg=cfg, device="cpu")


# ---------------------------------------------------------------------------- drawing
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
