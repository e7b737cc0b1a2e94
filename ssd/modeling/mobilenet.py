"""SSDLite with torchvision's MobileNetV3-Large (Howard et al. 2019, sec. 6.3; Sandler et al.
2018, sec. 6.2), built as torchvision's `ssdlite320_mobilenet_v3_large` builds it:

* backbone: `mobilenet_v3_large().features` (full tail, so the ImageNet weights fit), BatchNorm
  with eps 0.001 and momentum 0.03;
* sources: the expansion (first 1x1) layer of block C4, the last block with stride 2 (672
  channels, stride 16), and the last feature layer (960 channels, stride 32);
* extras: four depthwise-separable blocks (1x1 to half the width, 3x3 depthwise stride 2, 1x1),
  512, 256, 256, 128 channels, each halving the map (320 px: 10 -> 5 -> 3 -> 2 -> 1);
* heads: 3x3 depthwise + BN + ReLU6, then a 1x1 convolution;
* from-scratch layers initialised normal(0, 0.03) with zero bias, as torchvision does.

The input goes through `ImageNetInput` first (see ssd/modeling/imagenet.py). State dict keys:
mobilenet.N... (torchvision's features.N...), extras.N..., loc.N..., conf.N...
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.ops.misc import Conv2dNormActivation

from ssd.modeling.imagenet import ImageNetInput, TorchvisionWeights
from ssd.modeling.ssd import SSD, prior_options

# torchvision's SSDLite BatchNorm (its momentum 0.03 replaces MobileNetV3's 0.01).
NORM_LAYER = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
EXTRA_CHANNELS = (512, 256, 256, 128)
INIT_STD = 0.03  # normal init of the layers trained from scratch (torchvision's _normal_init)


def depthwise_separable_extra(in_channels: int, out_channels: int) -> nn.Sequential:
    """SSDLite extra block, [B, in, H, W] -> [B, out, ceil(H/2), ceil(W/2)]: 1x1 to out/2,
    3x3 depthwise stride 2, 1x1 to out, each with BN + ReLU6."""
    middle = out_channels // 2
    conv = partial(Conv2dNormActivation, norm_layer=NORM_LAYER, activation_layer=nn.ReLU6)
    return nn.Sequential(
        conv(in_channels, middle, kernel_size=1),
        conv(middle, middle, kernel_size=3, stride=2, groups=middle),
        conv(middle, out_channels, kernel_size=1),
    )


def depthwise_separable_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """SSDLite prediction head, [B, in, H, W] -> [B, out, H, W]: 3x3 depthwise + BN + ReLU6,
    then a 1x1 convolution (with bias)."""
    return nn.Sequential(
        Conv2dNormActivation(in_channels, in_channels, kernel_size=3, groups=in_channels,
                             norm_layer=NORM_LAYER, activation_layer=nn.ReLU6),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


def normal_init(module: nn.Module) -> None:
    """Every convolution in `module`: weights normal(0, INIT_STD), bias zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class SSDLiteMobileNetV3(SSD):
    """SSDLite with the MobileNetV3-Large backbone (model.backbone: mobilenet_v3_large).

    Args:
        num_classes, image_size, prior_args: as SSD. At 320 px the source maps are 20, 10, 5,
            3, 2, 1 (ceil(S / 16), then halved with rounding up).
    """

    TORCHVISION_WEIGHTS = TorchvisionWeights(
        backbone="mobilenet_v3_large",
        weights="MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        file_name="mobilenet_v3_large-8738ca79.pth",
        target="mobilenet",
        source_prefix="features.",
        unused_prefixes=("classifier.",),
    )

    def __init__(self, num_classes: int, image_size: int, **prior_args):
        super().__init__(num_classes, image_size, **prior_args)
        self.input_norm = ImageNetInput()
        self.mobilenet = mobilenet_v3_large(weights=None, norm_layer=NORM_LAYER).features
        normal_init(self.mobilenet)
        # C4: the last block with stride 2 (torchvision marks stride-2 blocks `_is_cn`).
        self.c4_index = max(i for i, block in enumerate(self.mobilenet) if getattr(block, "_is_cn", False))
        c4_block = self.mobilenet[self.c4_index]
        if c4_block.use_res_connect:
            raise ValueError("MobileNetV3 block C4 has a residual connection; cannot tap its expansion")
        expansion_channels = c4_block.block[0].out_channels
        last_channels = self.mobilenet[-1].out_channels
        widths = (last_channels, *EXTRA_CHANNELS)
        self.extras = nn.ModuleList(
            depthwise_separable_extra(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        normal_init(self.extras)
        self.source_names = ["C4 expansion", "features (last)"] + [
            f"extras.{i}" for i in range(len(self.extras))
        ]
        self._build_heads([expansion_channels, *widths])
        self._check_feature_maps()

    @classmethod
    def from_config(cls, model_cfg) -> SSDLiteMobileNetV3:
        """The model of a `model` config section (num_classes, image_size, priors)."""
        return cls(model_cfg.num_classes, model_cfg.image_size, **prior_options(model_cfg))

    def _make_head(self, in_channels: int, out_channels: int) -> nn.Module:
        return depthwise_separable_head(in_channels, out_channels)

    def _init_head(self, head: nn.Module) -> None:
        normal_init(head)

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, 3, S, S] -> 6 source maps (S=320: 672x20x20, 960x10x10, 512x5x5,
        256x3x3, 256x2x2, 128x1x1)."""
        x = self.input_norm(images)
        for block in self.mobilenet[: self.c4_index]:
            x = block(x)
        c4_layers = self.mobilenet[self.c4_index].block
        x = c4_layers[0](x)  # (B, 672, S/16, S/16): C4's 1x1 expansion
        sources = [x]
        for layer in c4_layers[1:]:  # depthwise stride 2, squeeze-excitation, projection
            x = layer(x)
        for block in self.mobilenet[self.c4_index + 1 :]:
            x = block(x)
        sources.append(x)  # (B, 960, S/32, S/32)
        for extra in self.extras:
            x = extra(x)
            sources.append(x)
        return sources
