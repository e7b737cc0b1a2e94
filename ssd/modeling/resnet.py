"""SSD300 with a ResNet-50 backbone, as NVIDIA's SSD300 v1.1 (DeepLearningExamples):

* backbone: torchvision's `resnet50` through layer3 (conv4_x), with stride 1 in layer3's first
  block (its 3x3 conv and its downsample), so conv4_x is 1024 x 38 x 38 at 300 px;
* extras: five blocks of 1x1 conv + BN + ReLU then 3x3 conv + BN + ReLU (no bias), giving
  512, 512, 256, 256, 256 channels at 19, 10, 5, 3, 1 for 300 px. The first three 3x3 convs
  have stride 2 and padding 1; the last two stride 1 and no padding (5 -> 3 -> 1);
* heads: the base class's 3x3 convolutions; extras and heads Xavier-uniform initialised.

The input goes through `ImageNetInput` first (see ssd/modeling/imagenet.py). State dict keys:
resnet.conv1 ... resnet.layer3 (torchvision's names), extras.N..., loc.N..., conf.N...
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet50

from ssd.modeling.imagenet import ImageNetInput, TorchvisionWeights
from ssd.modeling.ssd import SSD, prior_options, xavier_init

CONV4_CHANNELS = 1024  # layer3 output
# (middle channels of the 1x1, output channels, stride and padding of the 3x3) per extra block
EXTRAS = (
    (256, 512, 2, 1),
    (256, 512, 2, 1),
    (128, 256, 2, 1),
    (128, 256, 1, 0),
    (128, 256, 1, 0),
)


def resnet50_conv4() -> nn.Sequential:
    """ResNet-50 stem + layer1-3 with layer3 at stride 1: [B, 3, S, S] -> [B, 1024, S/8, S/8]
    (rounded up). Module names are torchvision's (conv1, bn1, relu, maxpool, layer1-3)."""
    net = resnet50(weights=None)
    first = net.layer3[0]
    first.conv2.stride = (1, 1)  # torchvision's ResNet-50 (v1.5) strides in the 3x3 conv
    first.downsample[0].stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))


def extra_block(in_channels: int, middle: int, out_channels: int, stride: int, padding: int) -> nn.Sequential:
    """[B, in, H, W] -> [B, out, H', W']: 1x1 conv-BN-ReLU, 3x3 conv-BN-ReLU (stride, padding)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, middle, kernel_size=1, bias=False),
        nn.BatchNorm2d(middle),
        nn.ReLU(inplace=True),
        nn.Conv2d(middle, out_channels, kernel_size=3, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResNet50SSD(SSD):
    """SSD300 with the ResNet-50 backbone (model.backbone: resnet50).

    Args:
        num_classes, image_size, prior_args: as SSD (300 px: maps 38, 19, 10, 5, 3, 1).
    """

    TORCHVISION_WEIGHTS = TorchvisionWeights(
        backbone="resnet50",
        weights="ResNet50_Weights.IMAGENET1K_V1",
        file_name="resnet50-0676ba61.pth",
        target="resnet",
        unused_prefixes=("layer4.", "fc."),
    )

    def __init__(self, num_classes: int, image_size: int, **prior_args):
        super().__init__(num_classes, image_size, **prior_args)
        self.input_norm = ImageNetInput()
        self.resnet = resnet50_conv4()
        self.extras = nn.ModuleList()
        in_channels = CONV4_CHANNELS
        for middle, out_channels, stride, padding in EXTRAS:
            self.extras.append(extra_block(in_channels, middle, out_channels, stride, padding))
            in_channels = out_channels
        for layer in self.extras.modules():
            xavier_init(layer)
        self.source_names = ["layer3"] + [f"extras.{i}" for i in range(len(EXTRAS))]
        self._build_heads([CONV4_CHANNELS, *(out for _, out, _, _ in EXTRAS)])
        self._check_feature_maps()

    @classmethod
    def from_config(cls, model_cfg) -> ResNet50SSD:
        """The model of a `model` config section (num_classes, image_size, priors)."""
        return cls(model_cfg.num_classes, model_cfg.image_size, **prior_options(model_cfg))

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, 3, S, S] -> 6 source maps (S=300: 1024x38x38, 512x19x19, 512x10x10,
        256x5x5, 256x3x3, 256x1x1)."""
        x = self.resnet(self.input_norm(images))  # (B, 1024, 38, 38) at 300
        sources = [x]
        for extra in self.extras:
            x = extra(x)
            sources.append(x)
        return sources
