"""The SSD detector: a feature extractor (one subclass per backbone) + loc/conf heads + priors."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ssd.priors import (
    boxes_per_location,
    default_aspect_ratios,
    default_boxes,
    derive_prior_settings,
    prior_settings_yaml,
)


class SSD(nn.Module):
    """Base SSD: subclasses build their layers, then call `_build_heads` and `_check_feature_maps`.

    A subclass implements `extract_features(images) -> list of [B, C_k, H_k, W_k]` and stores
    its layers as direct attributes, so state_dict keys read `vgg.0.weight`, `loc.0.weight`, ...
    exactly as in the classic published checkpoints.

    Forward:
        images: [B, 3, S, S] float (mean-subtracted BGR).
        returns loc [B, P, 4] offsets and conf [B, P, C] raw logits.

    Attributes:
        priors: [P, 4] (cx, cy, w, h) in [0, 1]; a non-persistent buffer.
        prior_settings: the model.priors values the priors were made from, derived ones included.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        feature_maps: Sequence[int] | None = None,
        steps: Sequence[float] | None = None,
        min_sizes: Sequence[float] | None = None,
        max_sizes: Sequence[float] | None = None,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        clip: bool = True,
    ):
        """Prior settings left None are derived from the backbone's source feature maps at
        `image_size` (`ssd.priors.derive_prior_settings`) when `_check_feature_maps` runs."""
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + 1), got {num_classes}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.clip = clip
        given = dict(feature_maps=feature_maps, steps=steps, min_sizes=min_sizes,
                     max_sizes=max_sizes, aspect_ratios=aspect_ratios)
        self._given_priors = {key: None if value is None else list(value)
                              for key, value in given.items()}
        self.feature_maps = self._given_priors["feature_maps"]
        self.aspect_ratios = None if aspect_ratios is None else [list(r) for r in aspect_ratios]

    @classmethod
    def from_config(cls, model_cfg) -> SSD:
        """The model of `cfg.model`: num_classes, image_size and the priors. A backbone with
        options of its own (e.g. ssd7's channels) overrides this to read them too."""
        return cls(model_cfg.num_classes, model_cfg.image_size, **prior_options(model_cfg))

    def num_anchors_per_location(self) -> list[int]:
        """Default boxes per cell for each feature map (2 + 2 * number of aspect ratios)."""
        return [boxes_per_location(ratios) for ratios in self.aspect_ratios]

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _build_heads(self, source_channels: Sequence[int]) -> None:
        """loc and conf heads (`_make_head`, then `_init_head`) on every source feature map; the
        aspect ratios, when not given, are `default_aspect_ratios` of the number of maps."""
        for key, value in self._given_priors.items():
            if value is not None and len(value) != len(source_channels):
                raise ValueError(
                    f"{type(self).__name__} has {len(source_channels)} source feature maps but "
                    f"model.priors.{key} lists {len(value)} (one entry per feature map; leave it "
                    "unset to derive it from the backbone)"
                )
        if self.aspect_ratios is None:
            self.aspect_ratios = default_aspect_ratios(len(source_channels))
        anchors = self.num_anchors_per_location()
        self.loc = nn.ModuleList(self._make_head(ch, a * 4) for ch, a in zip(source_channels, anchors))
        self.conf = nn.ModuleList(
            self._make_head(ch, a * self.num_classes) for ch, a in zip(source_channels, anchors)
        )
        for head in (*self.loc, *self.conf):
            self._init_head(head)

    def _make_head(self, in_channels: int, out_channels: int) -> nn.Module:
        """One prediction head, [B, in_channels, H, W] -> [B, out_channels, H, W]: a 3x3
        convolution. A subclass overrides this (and `_init_head`) for another head design."""
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def _init_head(self, head: nn.Module) -> None:
        """Initialise one head made by `_make_head` (Xavier-uniform weights, zero bias)."""
        xavier_init(head)

    @torch.no_grad()
    def _check_feature_maps(self) -> None:
        """Set the priors from the source feature map sizes of a zero image: the given
        feature maps must be those sizes, the settings not given are derived from them.

        Sets `feature_maps`, `prior_settings` (every model.priors key, as the config would
        hold it), `derived_prior_keys` (those derived) and the `priors` buffer [P, 4].
        """
        sizes = self._probe_feature_maps()
        derived = {**derive_prior_settings(sizes, self.image_size), "clip": self.clip}
        self._check_given_feature_maps(sizes, derived)
        settings = {key: derived[key] if value is None else value
                    for key, value in self._given_priors.items()}
        settings["aspect_ratios"] = self.aspect_ratios
        self.feature_maps = settings["feature_maps"]
        self.prior_settings = {**settings, "clip": self.clip}
        self.derived_prior_keys = [key for key, value in self._given_priors.items() if value is None]
        priors = default_boxes(image_size=self.image_size, clip=self.clip, **settings)
        self.register_buffer("priors", priors, persistent=False)

    def _probe_feature_maps(self) -> list[int]:
        """The side of each (square) source feature map for a zero image of `image_size`."""
        was_training = self.training
        self.eval()
        probe = torch.zeros(1, 3, self.image_size, self.image_size)
        features = self.extract_features(probe)
        self.train(was_training)
        sizes = []
        for index, feature in enumerate(features):
            height, width = feature.shape[-2:]
            if height != width:
                raise ValueError(
                    f"{type(self).__name__}: source feature map {index} ({self.source_names[index]}) "
                    f"is {height}x{width} at image size {self.image_size}; priors need square maps"
                )
            sizes.append(int(height))
        return sizes

    def _check_given_feature_maps(self, sizes: list[int], derived: dict) -> None:
        """ValueError naming the first given feature map that is not the probed size, followed
        by the derived priors block (`derived`) that fits this backbone, ready to paste."""
        given = self._given_priors["feature_maps"]
        if given is None:
            return
        for index, (actual, expected) in enumerate(zip(sizes, given)):
            if actual != expected:
                raise ValueError(
                    f"{type(self).__name__}: source feature map {index} ({self.source_names[index]}) "
                    f"is {actual}x{actual} at image size {self.image_size}, but "
                    f"model.priors.feature_maps[{index}] expects {expected}x{expected}. The priors "
                    f"that fit (or leave model.priors unset to derive them):\n"
                    f"{prior_settings_yaml(derived).rstrip()}"
                )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = images.shape[0]
        locs, confs = [], []
        for feature, loc_head, conf_head in zip(self.extract_features(images), self.loc, self.conf):
            # (B, A*4, H, W) -> (B, H, W, A*4) -> (B, HWA, 4): row, column, then anchor order,
            # matching the order of `default_boxes`.
            locs.append(loc_head(feature).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            # (B, A*C, H, W) -> (B, H, W, A*C) -> (B, HWA, C)
            confs.append(
                conf_head(feature).permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes)
            )
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)


def prior_options(model_cfg) -> dict:
    """The keyword arguments of `SSD.__init__` that `cfg.model.priors` holds (None: derived)."""
    priors = model_cfg.priors
    return dict(feature_maps=priors.feature_maps, steps=priors.steps, min_sizes=priors.min_sizes,
                max_sizes=priors.max_sizes, aspect_ratios=priors.aspect_ratios, clip=priors.clip)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero bias for a convolution."""
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
