"""SSD7: a small batch-norm network trainable from scratch.

Seven 3x3 conv blocks with 32-48-64-64-48-48-32 channels (the default widths; `model.channels`
sets others), each followed by a 2x2 max pool except the last; predictions from the last four
blocks.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ssd.modeling.ssd import SSD, prior_options, xavier_init

SSD7_CHANNELS = (32, 48, 64, 64, 48, 48, 32)
SSD7_NUM_SOURCES = 4  # the last four blocks feed the heads


class SSD7(SSD):
    """SSD with the SSD7 backbone; state_dict keys base.N, loc.N, conf.N.

    Args:
        num_classes, image_size, prior_args: as SSD.
        batch_norm: BatchNorm after every conv.
        channels: the 7 block widths (default SSD7_CHANNELS).
    """

    def __init__(self, num_classes: int, image_size: int, batch_norm: bool = True,
                 channels: Sequence[int] | None = None, **prior_args):
        super().__init__(num_classes, image_size, **prior_args)
        channels = tuple(channels or SSD7_CHANNELS)
        if len(channels) != len(SSD7_CHANNELS) or min(channels) < 1:
            raise ValueError(f"ssd7 channels={list(channels)}: expected {len(SSD7_CHANNELS)} "
                             f"positive widths, one per block (default {list(SSD7_CHANNELS)})")
        self.channels = channels
        layers: list[nn.Module] = []
        self.block_ends: list[int] = []  # index one past each block's ReLU
        in_channels = 3
        for block, out_channels in enumerate(channels):
            if block > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1,
                                    bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            self.block_ends.append(len(layers))
            in_channels = out_channels
        self.base = nn.ModuleList(layers)
        for layer in self.base:
            xavier_init(layer)
        self.source_blocks = list(range(len(channels) - SSD7_NUM_SOURCES, len(channels)))
        self.source_names = [f"block{b + 1}" for b in self.source_blocks]
        self._build_heads([channels[b] for b in self.source_blocks])
        self._check_feature_maps()

    @classmethod
    def from_config(cls, model_cfg) -> SSD7:
        """SSD7 of `cfg.model`, with model.batch_norm and model.channels."""
        return cls(model_cfg.num_classes, model_cfg.image_size, batch_norm=model_cfg.batch_norm,
                   channels=model_cfg.channels, **prior_options(model_cfg))

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, 3, S, S] -> the outputs of blocks 4-7 (S=300: 37, 18, 9, 4)."""
        sources = []
        x = images
        start = 0
        for block, end in enumerate(self.block_ends):
            for layer in self.base[start:end]:
                x = layer(x)
            start = end
            if block in self.source_blocks:
                sources.append(x)
        return sources
