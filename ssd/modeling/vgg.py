"""VGG16-reducedfc SSD (Liu et al. 2016) in the layout of the classic published checkpoints.

State dict keys: vgg.0 ... vgg.33, L2Norm.weight, extras.0-7 (SSD300) / extras.0-9 (SSD512),
loc.0-K, conf.0-K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssd.modeling.ssd import SSD, xavier_init

# VGG16 configuration D: channels per 3x3 conv, "M" = 2x2 max pool, "C" = pool with ceil_mode.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]

# Extra layers: (out_channels, kernel, stride, padding) per conv; every second conv is a source.
EXTRAS = {
    300: [(256, 1, 1, 0), (512, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1),
          (128, 1, 1, 0), (256, 3, 1, 0), (128, 1, 1, 0), (256, 3, 1, 0)],
    512: [(256, 1, 1, 0), (512, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1),
          (128, 1, 1, 0), (256, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1),
          (128, 1, 1, 0), (256, 4, 1, 1)],
}  # fmt: skip


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (ParseNet)."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> same shape and dtype, each pixel's channel vector scaled to norm
        `weight`. Computed in float32: in float16 the squares overflow (300 ** 2 > 65504)."""
        x32 = x.float()
        norm = x32.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps  # (B, 1, H, W)
        return (x32 / norm * self.weight.float().view(1, -1, 1, 1)).to(x.dtype)


def vgg16_reducedfc_layers() -> tuple[nn.ModuleList, int]:
    """The VGG16 layer list up to conv7, and the index of conv4_3's ReLU.

    Returns:
        layers: 35 modules; conv6 (3x3, dilation 6, 1024) and conv7 (1x1, 1024) replace fc6/fc7.
        conv4_3_end: index one past conv4_3's ReLU (the L2Norm source).
    """
    layers: list[nn.Module] = []
    in_channels = 3
    conv4_3_end = -1
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))  # 75 -> 38
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = item
        if item == 512 and conv4_3_end < 0 and _count_convs(layers, 512) == 3:
            conv4_3_end = len(layers)  # third 512-channel conv + ReLU = conv4_3
    layers += [
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5 keeps the 19x19 resolution
        nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # conv6 (fc6 a trous)
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),  # conv7 (fc7)
        nn.ReLU(inplace=True),
    ]
    return nn.ModuleList(layers), conv4_3_end


def _count_convs(layers: list[nn.Module], channels: int) -> int:
    return sum(isinstance(m, nn.Conv2d) and m.out_channels == channels for m in layers)


class VGGSSD(SSD):
    """SSD300 / SSD512 with the VGG16-reducedfc backbone."""

    def __init__(self, num_classes: int, image_size: int, **prior_args):
        super().__init__(num_classes, image_size, **prior_args)
        if image_size not in EXTRAS:
            raise ValueError(
                f"backbone 'vgg16' supports model.image_size 300 or 512, got {image_size}"
            )
        self.vgg, self.conv4_3_end = vgg16_reducedfc_layers()
        self.L2Norm = L2Norm(512, scale=20.0)
        self.extras = nn.ModuleList()
        in_channels = 1024
        for out_channels, kernel, stride, padding in EXTRAS[image_size]:
            self.extras.append(nn.Conv2d(in_channels, out_channels, kernel, stride, padding))
            in_channels = out_channels
        for conv in self.extras:
            xavier_init(conv)
        extra_sources = [conv.out_channels for conv in self.extras[1::2]]
        self.source_names = ["conv4_3", "conv7"] + [
            f"extras.{i}" for i in range(1, len(self.extras), 2)
        ]
        self._build_heads([512, 1024, *extra_sources])
        self._check_feature_maps()

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, 3, S, S] -> source maps (S=300: 38, 19, 10, 5, 3, 1)."""
        x = images
        for layer in self.vgg[: self.conv4_3_end]:
            x = layer(x)  # (B, 512, 38, 38) at 300: conv4_3 after its ReLU
        sources = [self.L2Norm(x)]
        for layer in self.vgg[self.conv4_3_end :]:
            x = layer(x)  # (B, 1024, 19, 19) at 300: conv7 after its ReLU
        sources.append(x)
        for index, conv in enumerate(self.extras):
            x = F.relu(conv(x), inplace=True)
            if index % 2 == 1:
                sources.append(x)
        return sources
