"""Images in, the network's input out: what the predictor, the export check and the pictures share.

    image = load_image("photo.jpg")                      # uint8 [H, W, 3] BGR
    inputs = network_input(image, BaseTransform(300))    # float32 [300, 300, 3] RGB minus the mean

Images are paths or arrays (BGR, as OpenCV reads them). Grey [H, W] / [H, W, 1], BGRA
[H, W, 4] (alpha ignored), 16-bit and float images are converted to uint8 BGR first. The
network input is the evaluation's (`ssd.data.BaseTransform`: resized to S x S, channels
reordered to RGB, the mean subtracted); images more than twice the network input on a side are
first area-averaged down to that, so very large images do not alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import cv2
import numpy as np

from ssd.commands import command
from ssd.data import BaseTransform
from ssd.fileio import decode_image_file

ImageInput = Union[str, Path, np.ndarray]

MAX_INPUT_RATIO = 2  # sides above this many network inputs are area-averaged down first


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
        raise IsADirectoryError(f"{path} is a folder, not an image file ({command('ssd-predict')} "
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
    """uint8 [H, W, 3] BGR -> float32 [S, S, 3] RGB minus the mean, as the evaluation feeds
    the network (`transform` is the evaluation's `BaseTransform`).

    Sides larger than MAX_INPUT_RATIO x S are first area-averaged down to that size (the
    final linear resize then averages at most 2x2 pixels, as for ordinary images).
    """
    height, width = image.shape[:2]
    limit = MAX_INPUT_RATIO * transform.size
    if max(height, width) > limit:
        image = cv2.resize(image, (min(width, limit), min(height, limit)),
                           interpolation=cv2.INTER_AREA)
    return transform(image)[0]
