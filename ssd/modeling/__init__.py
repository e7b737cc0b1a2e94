"""Model construction: the backbone registry (`BACKBONES`) and `build_model(cfg)`."""

from ssd.modeling.derived import resolve_priors
from ssd.modeling.mobilenet import SSDLiteMobileNetV3
from ssd.modeling.registry import BACKBONES, build_model
from ssd.modeling.resnet import ResNet50SSD
from ssd.modeling.ssd import SSD
from ssd.modeling.ssd7 import SSD7
from ssd.modeling.vgg import VGGSSD

__all__ = ["BACKBONES", "SSD", "SSD7", "ResNet50SSD", "SSDLiteMobileNetV3", "VGGSSD", "build_model",
           "resolve_priors"]
