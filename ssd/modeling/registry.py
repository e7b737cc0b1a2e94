"""The backbone registry: name (model.backbone) -> an SSD subclass that builds itself.

    BACKBONES["mynet"] = MyNetSSD        # MyNetSSD.from_config(cfg.model) -> SSD
    model = build_model(cfg)             # with model.backbone: mynet

Config validation reads the valid names of model.backbone from here, so this module never
imports ssd.config (`resolve_priors`, which derives a config, is in ssd.modeling.derived).
"""

from __future__ import annotations

from ssd.modeling.mobilenet import SSDLiteMobileNetV3
from ssd.modeling.resnet import ResNet50SSD
from ssd.modeling.ssd import SSD
from ssd.modeling.ssd7 import SSD7
from ssd.modeling.vgg import VGGSSD

BACKBONES: dict[str, type[SSD]] = {
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
    name = cfg.model.backbone
    if name not in BACKBONES:
        raise KeyError(
            f"No backbone named '{name}' (model.backbone); known: {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[name].from_config(cfg.model)


def describe_derived_priors(model: SSD) -> str:
    """One line naming the prior settings `model` derived from its backbone and their values."""
    derived = ", ".join(f"{key} {model.prior_settings[key]}" for key in model.derived_prior_keys)
    return (f"model.priors derived from {type(model).__name__} at {model.image_size} px "
            f"(stored in checkpoints): {derived}")
