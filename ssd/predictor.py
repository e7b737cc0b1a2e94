"""Image(s) in, detections in the original pixels out.

    p = Predictor("weights/ssd300.pth", device="cpu")      # config from the checkpoint or --config
    dets = p.predict("image.jpg")   # [{"box": [x1, y1, x2, y2], "score": 0.93, "label": 11,
                                    #   "class_name": "dog"}, ...] by decreasing score
    p.predict_batch(["a.jpg", bgr_array, ...])              # one list per image
    drawn = p.draw("image.jpg", dets)                        # uint8 BGR copy with boxes + labels

Images are paths or arrays (BGR, as OpenCV reads them), converted and fed to the network as
`ssd.images` describes (`load_image`, then the evaluation's `BaseTransform` through
`network_input`); `ssd.drawing.draw_detections` draws the result. Boxes come back in the original
image's pixel frame: normalised coordinates times (width, height), clipped to [0, width] x
[0, height]; for a model trained on VOC XML boxes that is the 0-based frame (XML value - 1),
as `ssd.postprocess.scale_boxes` explains.

Inference runs under ``torch.inference_mode`` in the precision given (default: the fastest safe
one for the device, `ssd.precision.default_precision`: bf16 autocast + channels_last on
CPUs with native bf16, fp16 autocast on CUDA, else fp32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ssd.commands import clone_doc, command
from ssd.config import Config, load_config
from ssd.data import BaseTransform, class_names_for
from ssd.drawing import Detection, draw_detections
from ssd.images import ImageInput, load_image, network_input
from ssd.postprocess import build_postprocessor, scale_boxes
from ssd.precision import autocast_context, default_precision, prepare_for_inference, resolve_device

REPO_ROOT = Path(__file__).resolve().parents[1]


def train_hint() -> str:
    """How to get weights, naming the train command as it is run here (ssd.commands)."""
    return (f"Train one with `{command('ssd-train')} --config configs/shapes.yaml` (a few minutes "
            "on a CPU; checkpoints go to runs/shapes/, e.g. runs/shapes/best.pth), or put "
            "published weights such as ssd300_mAP_77.43_v2.pth in weights/"
            f"{clone_doc('weights/README.md for the files supported')}.")


# ---------------------------------------------------------------------------- classes


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
        compile: run the network through torch.compile (the first batch of each new batch
            size compiles it: seconds to minutes; then faster on GPUs). Same outputs as eager
            within float rounding.

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
        compile: bool = False,
    ):
        _check_settings(score_threshold, nms_threshold, top_k, batch_size)
        self.device = resolve_device(device)
        self.precision = precision or default_precision(self.device)
        autocast_context(self.device, self.precision)  # raises for unknown / unsupported ones
        model, self.cfg = _load_model(weights, config)
        self.model = prepare_for_inference(model, self.device, self.precision)
        self.network = torch.compile(self.model) if compile else self.model  # runs the forward pass
        self.class_names = class_names_for(self.cfg)
        self.postprocess = build_postprocessor(
            self.cfg, score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k)
        self.transform = BaseTransform(self.cfg.model.image_size, self.cfg.data.mean)
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (f"Predictor({type(self.model).__name__}, {len(self.class_names)} classes, "
                f"input {self.transform.size}, device={self.device}, precision={self.precision}, "
                f"score_threshold={self.postprocess.score_threshold})")

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
            loc, conf = self.network(images)
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
        raise FileNotFoundError(f"Weights file not found: {path}. {train_hint()}")
    return build_model_from_weights(path, cfg=cfg, device="cpu")
