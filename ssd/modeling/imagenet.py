"""What ImageNet-pretrained torchvision backbones need: their input scaling and their weights.

Input. The project's transforms (ssd/data/transforms.py) give float images [B, 3, S, S] in
**RGB** order on the 0-255 scale with `data.mean` (a BGR triple) subtracted, and no division by
a standard deviation. torchvision's ImageNet classifiers were trained on RGB in [0, 1]
normalised as (x - mean) / std with the ImageNet statistics below. Since

    (rgb / 255 - mean) / std = (rgb - 255 * mean) / (255 * std),

a backbone fed by the project's transform gets exactly its expected input when `data.mean` is
the ImageNet mean on the 0-255 scale (`IMAGENET_MEAN_BGR_255`, which the configs of these
backbones set) and the model divides by 255 * std: `ImageNetInput`, the model's first step.
The default `data.mean` [104, 117, 123] differs from it by under one grey level (under 0.013
standard deviations), so it is close enough too.

Weights. A `TorchvisionWeights` names the torchvision ImageNet weights of a backbone, the file
torchvision downloads them to, and which model attribute receives them; `ssd.weights.
load_pretrained_backbone` reads them for `model.pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # of RGB in [0, 1]
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
PIXEL_SCALE = 255.0  # the transforms' images are on the 0-255 scale
# The `data.mean` (BGR, 0-255) under which the transforms' output is rgb - 255 * mean exactly.
IMAGENET_MEAN_BGR_255 = tuple(round(PIXEL_SCALE * m, 3) for m in reversed(IMAGENET_MEAN_RGB))


class ImageNetInput(nn.Module):
    """Divide mean-subtracted 0-255 RGB images by 255 * the ImageNet std, per channel.

    Forward: images [B, 3, H, W] (RGB, 0-255 minus the ImageNet mean) -> same shape,
    normalised as torchvision's ImageNet classifiers expect. The scale is a non-persistent
    buffer: it follows the model's device and dtype and adds nothing to the state_dict.
    """

    def __init__(self):
        super().__init__()
        scale = 1.0 / (PIXEL_SCALE * torch.tensor(IMAGENET_STD_RGB))
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)  # [1, 3, 1, 1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale


@dataclass(frozen=True)
class TorchvisionWeights:
    """Where a backbone's ImageNet weights come from and where in the model they go.

    Attributes:
        backbone: the model.backbone name (for messages).
        weights: torchvision's weights enum entry, e.g. "MobileNet_V3_Large_Weights.IMAGENET1K_V1"
            (`torchvision.models.get_weight` resolves it).
        file_name: the file torchvision downloads them to, e.g. "mobilenet_v3_large-8738ca79.pth".
        target: the model attribute (an nn.Module) that receives them.
        source_prefix: the prefix of the torchvision keys that belong to `target` (stripped
            before loading).
        unused_prefixes: prefixes of the torchvision keys the detector does not use (e.g. the
            classifier), dropped before the strict load.
    """

    backbone: str
    weights: str
    file_name: str
    target: str
    source_prefix: str = ""
    unused_prefixes: tuple[str, ...] = ()
