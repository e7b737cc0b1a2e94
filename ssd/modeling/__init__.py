"""Model construction: a name-keyed backbone registry and `build_model(cfg)`."""

from __future__ import annotations

from typing import Callable

from ssd.modeling.mobilenet import SSDLiteMobileNetV3
from ssd.modeling.resnet import ResNet50SSD
from ssd.modeling.ssd import SSD, prior_args_of
from ssd.modeling.ssd7 import SSD7
from ssd.modeling.vgg import VGGSSD

BACKBONES: dict[str, Callable[..., SSD]] = {
    "vgg16": VGGSSD,
    "ssd7": SSD7,
    "mobilenet_v3_large": SSDLiteMobileNetV3,
    "resnet50": ResNet50SSD,
}


def build_model(cfg) -> SSD:
    """The SSD of `cfg.model`: backbone, heads and priors (feature map sizes checked).

    Returns an nn.Module whose forward maps images [B, 3, S, S] to (loc [B, P, 4],
    conf [B, P, C]); `model.priors` is [P, 4] (cx, cy, w, h).
    """
    model_cfg = cfg.model
    name = model_cfg.backbone
    if name not in BACKBONES:
        raise KeyError(
            f"No backbone named '{name}' (model.backbone); known: {', '.join(sorted(BACKBONES))}"
        )
    if hasattr(BACKBONES[name], "from_config"):
        return BACKBONES[name].from_config(model_cfg)
    prior_args = prior_args_of(model_cfg)
    extra = {"batch_norm": model_cfg.batch_norm, "channels": model_cfg.channels} if name == "ssd7" else {}
    return BACKBONES[name](model_cfg.num_classes, model_cfg.image_size, **extra, **prior_args)


__all__ = ["BACKBONES", "SSD", "SSD7", "ResNet50SSD", "SSDLiteMobileNetV3", "VGGSSD", "build_model"]
