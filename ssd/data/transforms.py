"""SSD data augmentation (Liu et al. 2016, sec. 2.2 "Data augmentation") and the test transform.

Both transforms are called as ``transform(image, boxes, labels, rng=None)`` with
image uint8 [H, W, 3] BGR, boxes float32 [n, 4] xyxy normalised to [0, 1], labels int [n],
and return (image float32 [S, S, 3], boxes float32 [m, 4], labels [m]). The output image has the
mean subtracted and its channels in **RGB order**: the classic SSD port subtracts the BGR mean
and then swaps to RGB, so that order is what its published checkpoints (ssd300_mAP_77.43_v2.pth)
expect; a predictor should use `BaseTransform` rather than its own resize. Everything random is
drawn from `rng`, so an augmented sample is a pure function of (image, boxes, rng seed): this is
what makes resumed and multi-worker training reproducible.

`SSDAugmentation` draws all its random choices first (`sample_params`) and then applies them
(`apply`), so each step can be tested with chosen parameters. The work is done on uint8 images
with a few whole-image OpenCV calls:

* brightness and contrast are one 256-entry lookup table (`cv2.LUT`);
* saturation and hue are one 3-channel lookup table between a single BGR->HSV conversion and
  its inverse (8-bit HSV_FULL: hue steps of 1.4 degrees);
* zoom-out (expand), the min-IoU crop, the mirror and the resize are a single `cv2.warpAffine`
  of the original image whose border is filled with the mean (edge pixels are repeated when
  there is no zoom-out, as cv2.resize does): the up-to-16x larger canvas is never built;
* the random channel swap, mean subtraction and the BGR->RGB swap are one final indexing +
  subtraction on the small output image.

Pixel values are clipped to [0, 255] between photometric steps (the classic float pipeline lets
them leave that range, which makes its HSV step ill-defined).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

# Used when no generator is passed (e.g. `ds[i]` with a transform attached).
_DEFAULT_RNG = np.random.default_rng()

# Crop modes of the paper: None keeps the whole image; otherwise the minimum IoU that some
# object must have with the patch (-inf: any patch).
CROP_MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -np.inf)
CROP_TRIALS = 50  # patches tried per mode, as the original
CROP_MIN_SCALE = 0.3  # patch side >= 0.3 x image side
CROP_MAX_ASPECT = 2.0  # patch height / width in [1/2, 2]
MAX_MODE_DRAWS = 100  # safety bound; the whole-image mode ends the search with p = 1/7 each draw


@dataclass
class AugmentParams:
    """One draw of SSDAugmentation's random choices (the defaults change nothing).

    Geometry is expressed in the pixels of the "canvas": the image placed at (left, top) in an
    area `ratio` times its size (ratio 1, offset 0 without zoom-out).
    """

    brightness: float = 0.0  # added to every channel
    contrast: float = 1.0  # multiplies every channel
    contrast_last: bool = False  # contrast after (True) or before (False) saturation and hue
    saturation: float = 1.0  # multiplies HSV saturation
    hue: float = 0.0  # degrees added to HSV hue
    channel_order: tuple[int, int, int] = (0, 1, 2)  # new channel c = old channel order[c]
    expand: tuple[float, float, float] | None = None  # (ratio, left, top)
    crop: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) in the canvas
    flip: bool = False  # horizontal mirror

    @property
    def plain_rescale(self) -> bool:
        """No zoom-out and no crop: the output frames the whole image (maybe mirrored)."""
        return self.expand is None and self.crop is None


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] -> [size, size, 3], bilinear (cv2.resize; an image already that size is
    copied unchanged). The one resize of the transforms and of the resized image cache."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def boxes_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair: a [N, 4] xyxy, b [M, 4] xyxy -> [N, M] (continuous coordinates)."""
    low = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # [N, M, 2]
    high = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # [N, M, 2]
    inter = np.prod(np.clip(high - low, 0, None), axis=2)  # [N, M]
    area_a = np.prod(boxes_a[:, 2:] - boxes_a[:, :2], axis=1)
    area_b = np.prod(boxes_b[:, 2:] - boxes_b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def sample_crop(
    width: float, height: float, boxes: np.ndarray, rng: np.random.Generator,
    trials: int = CROP_TRIALS,
) -> tuple[float, float, float, float] | None:
    """The min-IoU random crop of the paper, all `trials` patches of a mode drawn at once.

    A mode is drawn from `CROP_MIN_IOUS`; for it, patches of side 0.3-1 x the image side and
    aspect ratio 1/2-2 are tried; the first one that has IoU >= the mode's minimum with some
    object and contains the centre of at least one object is taken. When no patch fits,
    another mode is drawn (the original loops the same way).

    Args:
        width, height: canvas size in pixels.
        boxes: [n, 4] xyxy objects in canvas pixels (n may be 0: any patch then fits).

    Returns:
        (x0, y0, x1, y1) in canvas pixels, or None to keep the whole canvas.
    """
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [n, 2]
    for _ in range(MAX_MODE_DRAWS):
        min_iou = CROP_MIN_IOUS[rng.integers(len(CROP_MIN_IOUS))]
        if min_iou is None:
            return None
        size = rng.uniform(CROP_MIN_SCALE, 1.0, size=(trials, 2)) * (width, height)  # [T, 2]
        corner = rng.uniform(0.0, 1.0, size=(trials, 2)) * ((width, height) - size)  # [T, 2]
        patches = np.concatenate([corner, corner + size], axis=1)  # [T, 4]
        aspect = size[:, 1] / size[:, 0]
        fits = (aspect >= 1 / CROP_MAX_ASPECT) & (aspect <= CROP_MAX_ASPECT)
        if len(boxes):
            overlap = boxes_iou(patches, boxes).max(axis=1) >= min_iou  # [T]
            inside = ((centres[None] > patches[:, None, :2]) &
                      (centres[None] < patches[:, None, 2:])).all(axis=2)  # [T, n]
            fits &= overlap & inside.any(axis=1)
        hits = np.flatnonzero(fits)
        if hits.size:
            return tuple(float(v) for v in patches[hits[0]])
    return None


def _affine_lut(scale: float, shift: float) -> np.ndarray:
    """uint8 lookup table [256] of v -> clip(round(v * scale + shift), 0, 255)."""
    values = np.arange(256, dtype=np.float32) * scale + shift
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _hsv_lut(saturation: float, hue: float) -> np.ndarray:
    """Lookup table [1, 256, 3] for 8-bit HSV_FULL: hue shifted (wrapping), saturation scaled."""
    values = np.arange(256, dtype=np.float32)
    hue_steps = int(round(hue * 256.0 / 360.0))
    hue_lut = ((np.arange(256) + hue_steps) % 256).astype(np.uint8)
    sat_lut = np.clip(np.rint(values * saturation), 0, 255).astype(np.uint8)
    return np.stack([hue_lut, sat_lut, np.arange(256, dtype=np.uint8)], axis=1)[None]


def photometric(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Brightness, contrast, saturation and hue of `params` on uint8 [H, W, 3] BGR -> same.

    (The channel swap is left to `finish`, where it costs nothing.)
    """
    pre_contrast = 1.0 if params.contrast_last else params.contrast
    if params.brightness != 0.0 or pre_contrast != 1.0:  # (v + delta) * alpha, one table
        image = cv2.LUT(image, _affine_lut(pre_contrast, params.brightness * pre_contrast))
    if params.saturation != 1.0 or params.hue != 0.0:
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL)
        hsv = cv2.LUT(hsv, _hsv_lut(params.saturation, params.hue))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)
    if params.contrast_last and params.contrast != 1.0:
        image = cv2.LUT(image, _affine_lut(params.contrast, 0.0))
    return image


def finish(image: np.ndarray, channel_order: Sequence[int], mean: Sequence[float]) -> np.ndarray:
    """uint8 [S, S, 3] BGR -> float32 [S, S, 3] RGB minus the mean, after a channel swap.

    Args:
        channel_order: the swap (new BGR channel c = old channel channel_order[c]).
        mean: per-channel mean in BGR order, subtracted after the swap.
    """
    rgb_source = [channel_order[2], channel_order[1], channel_order[0]]
    mean_rgb = np.asarray(mean, dtype=np.float32)[::-1]
    return np.subtract(image[..., rgb_source], mean_rgb, dtype=np.float32)


def _geometry(params: AugmentParams, width: int, height: int):
    """Canvas offset (left, top) and crop rectangle (x0, y0, x1, y1) of `params`."""
    ratio, left, top = params.expand if params.expand is not None else (1.0, 0.0, 0.0)
    crop = params.crop if params.crop is not None else (0.0, 0.0, width * ratio, height * ratio)
    return (left, top), crop


def transform_boxes(
    boxes: np.ndarray, labels: np.ndarray, params: AugmentParams, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Move normalised boxes [n, 4] of a width x height image through expand, crop and mirror.

    A crop keeps the boxes whose centre lies inside it, clipped to it. Returns boxes float32
    [m, 4] normalised to the output, all of positive size, and their labels [m]. Without
    zoom-out and crop the normalised boxes only mirror, whatever the image size.
    """
    if params.plain_rescale:
        out = boxes.astype(np.float64)
    else:
        out, labels = _expand_and_crop_boxes(boxes, labels, params, width, height)
    if params.flip:
        out = np.stack([1 - out[:, 2], out[:, 1], 1 - out[:, 0], out[:, 3]], axis=1)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    valid = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[valid], labels[valid]


def _expand_and_crop_boxes(boxes: np.ndarray, labels: np.ndarray, params: AugmentParams,
                           width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised boxes [n, 4] -> float64 [m, 4] normalised to the crop of the zoom-out
    canvas (the boxes whose centre lies inside it, clipped to it), and their labels [m]."""
    (left, top), (x0, y0, x1, y1) = _geometry(params, width, height)
    pixels = boxes.astype(np.float64) * (width, height, width, height) + (left, top, left, top)
    if params.crop is not None:
        centres = (pixels[:, :2] + pixels[:, 2:]) / 2  # [n, 2]
        keep = ((centres > (x0, y0)) & (centres < (x1, y1))).all(axis=1)
        pixels = np.clip(pixels[keep], (x0, y0, x0, y0), (x1, y1, x1, y1))
        labels = labels[keep]
    return (pixels - (x0, y0, x0, y0)) / (x1 - x0, y1 - y0, x1 - x0, y1 - y0), labels


def warp_matrix(params: AugmentParams, width: int, height: int, size: int) -> np.ndarray:
    """2x3 affine map from image pixels to the size x size output of expand + crop + mirror.

    Pixel i covers [i, i+1); output pixel j = (i + 0.5 + left - x0) * size / crop_width - 0.5
    (the centre alignment of cv2.resize), mirrored as j -> size - 1 - j.
    """
    (left, top), (x0, y0, x1, y1) = _geometry(params, width, height)
    scale_x, scale_y = size / (x1 - x0), size / (y1 - y0)
    shift_x = (0.5 + left - x0) * scale_x - 0.5
    shift_y = (0.5 + top - y0) * scale_y - 0.5
    if params.flip:
        scale_x, shift_x = -scale_x, size - 1 - shift_x
    return np.array([[scale_x, 0.0, shift_x], [0.0, scale_y, shift_y]], dtype=np.float64)


class SSDAugmentation:
    """The SSD training augmentation.

    photometric distortion (brightness, contrast, saturation, hue, channel swap; each with
    p = 0.5) -> zoom-out (p = 0.5, canvas up to `max_expand` x the image side, filled with the
    mean) -> min-IoU random crop -> horizontal mirror (p = 0.5) -> resize to size x size ->
    mean subtraction (and BGR -> RGB).

    Each stage can be switched off (the defaults are the paper's recipe); a short training run
    learns faster with only the mirror (see configs/shapes.yaml).

    Args:
        size: output side S.
        mean: BGR mean pixel, also the zoom-out fill.
        max_expand: largest zoom-out ratio (1: no zoom-out).
        photometric: apply the photometric distortions.
        crop: apply the min-IoU random crop.
        mirror: apply the horizontal mirror.
    """

    def __init__(self, size: int = 300, mean: Sequence[float] = (104, 117, 123),
                 max_expand: float = 4.0, photometric: bool = True, crop: bool = True,
                 mirror: bool = True):
        if max_expand < 1:
            raise ValueError(f"max_expand={max_expand}: expected a zoom-out ratio >= 1 "
                             "(1 turns zoom-out off)")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.max_expand = float(max_expand)
        self.photometric = bool(photometric)
        self.crop = bool(crop)
        self.mirror = bool(mirror)

    def __repr__(self) -> str:
        return (f"SSDAugmentation(size={self.size}, mean={self.mean}, max_expand={self.max_expand}, "
                f"photometric={self.photometric}, crop={self.crop}, mirror={self.mirror})")

    @property
    def resizes_only(self) -> bool:
        """Whether every draw only resizes to S x S and maybe mirrors (no photometric change,
        zoom-out or crop). Then an image already resized to S x S gives the same output bit for
        bit: ``cv2.resize`` to its own size copies it (what `data.cache_images` relies on)."""
        return not self.photometric and self.max_expand == 1 and not self.crop

    def sample_params(self, height: int, width: int, boxes: np.ndarray,
                      rng: np.random.Generator) -> AugmentParams:
        """Draw every random choice for a height x width image with normalised boxes [n, 4]."""
        params = AugmentParams()
        if self.photometric:
            self._sample_photometric(params, rng)
        canvas = np.array([width, height], dtype=np.float64)
        offset = np.zeros(2)
        if self.max_expand > 1 and rng.random() < 0.5:
            ratio = float(rng.uniform(1.0, self.max_expand))
            offset = rng.uniform(0.0, 1.0, size=2) * canvas * (ratio - 1)
            params.expand = (ratio, float(offset[0]), float(offset[1]))
            canvas = canvas * ratio
        if self.crop:
            pixels = boxes.reshape(-1, 4) * (width, height, width, height) + np.tile(offset, 2)
            params.crop = sample_crop(canvas[0], canvas[1], pixels, rng)
        if self.mirror:
            params.flip = bool(rng.random() < 0.5)
        return params

    @staticmethod
    def _sample_photometric(params: AugmentParams, rng: np.random.Generator) -> None:
        if rng.random() < 0.5:
            params.brightness = float(rng.uniform(-32.0, 32.0))
        params.contrast_last = bool(rng.random() < 0.5)
        if rng.random() < 0.5:
            params.contrast = float(rng.uniform(0.5, 1.5))
        if rng.random() < 0.5:
            params.saturation = float(rng.uniform(0.5, 1.5))
        if rng.random() < 0.5:
            params.hue = float(rng.uniform(-18.0, 18.0))
        if rng.random() < 0.5:
            params.channel_order = tuple(int(c) for c in rng.permutation(3))

    def apply(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
              params: AugmentParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply chosen `params`: image uint8 [H, W, 3] BGR, boxes [n, 4] normalised, labels [n]
        -> (float32 [S, S, 3] RGB minus mean, boxes float32 [m, 4], labels [m])."""
        height, width = image.shape[:2]
        boxes, labels = transform_boxes(np.asarray(boxes).reshape(-1, 4), np.asarray(labels),
                                        params, width, height)
        resampled = self._resample(photometric(image, params), params)
        return finish(resampled, params.channel_order, self.mean), boxes, labels

    def _resample(self, image: np.ndarray, params: AugmentParams) -> np.ndarray:
        """[H, W, 3] -> [S, S, 3] through zoom-out, crop and mirror in one bilinear warp.

        Without zoom-out and crop it is a plain rescale (and mirror): then ``cv2.resize``, as
        BaseTransform resizes at test time, and ``cv2.flip``. They sample the same positions
        as the warp (its centre alignment is resize's) in half the time; their fixed-point
        weights round differently, by at most 1 in a pixel value.
        """
        if params.plain_rescale:
            resized = resize_square(image, self.size)
            return cv2.flip(resized, 1) if params.flip else resized
        height, width = image.shape[:2]
        # Outside the image: the zoom-out canvas (the mean) or, without zoom-out, the edge pixels
        # (as cv2.resize does).
        fill = np.empty(3)
        fill[list(params.channel_order)] = self.mean  # so that the swap in `finish` restores it
        border = cv2.BORDER_CONSTANT if params.expand is not None else cv2.BORDER_REPLICATE
        return cv2.warpAffine(image, warp_matrix(params, width, height, self.size),
                              (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=border,
                              borderValue=tuple(fill))

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator | None = None):
        """image uint8 [H, W, 3] BGR, boxes [n, 4] normalised xyxy, labels [n] ->
        (image float32 [S, S, 3] RGB minus mean, boxes float32 [m, 4], labels [m])."""
        rng = _DEFAULT_RNG if rng is None else rng
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        params = self.sample_params(image.shape[0], image.shape[1], boxes, rng)
        return self.apply(image, boxes, labels, params)


class BaseTransform:
    """Test-time transform: resize to size x size, subtract the mean, BGR -> RGB.

    Called like SSDAugmentation; boxes and labels pass through unchanged (they are normalised,
    so resizing does not move them) and may be None.
    """

    resizes_only = True  # see SSDAugmentation.resizes_only

    def __init__(self, size: int = 300, mean: Sequence[float] = (104, 117, 123)):
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)

    def __repr__(self) -> str:
        return f"BaseTransform(size={self.size}, mean={self.mean})"

    def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None,
                 labels: np.ndarray | None = None, rng: np.random.Generator | None = None):
        """image uint8 [H, W, 3] BGR -> (float32 [S, S, 3] RGB minus mean, boxes, labels)."""
        return finish(resize_square(image, self.size), (0, 1, 2), self.mean), boxes, labels
