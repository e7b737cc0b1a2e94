"""Model construction: the backbone registry (`BACKBONES`) and `build_model(cfg)`."""

from ssd.modeling.registry import BACKBONES, build_model
from ssd.modeling.ssd import SSD
from ssd.modeling.ssd7 import SSD7
from ssd.modeling.vgg import VGGSSD

__all__ = ["BACKBONES", "SSD", "SSD7", "VGGSSD", "build_model"]
