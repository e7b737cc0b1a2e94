"""Default (prior) boxes of SSD: a pure function of the prior settings, and the settings a
backbone gets from the sizes of its source feature maps when the config leaves them out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import yaml


def boxes_per_location(aspect_ratios: Sequence[float]) -> int:
    """Number of default boxes at one feature-map cell: 2 squares + 2 per aspect ratio."""
    return 2 + 2 * len(aspect_ratios)


def default_boxes(
    feature_maps: Sequence[int],
    image_size: int,
    steps: Sequence[float],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    clip: bool = True,
) -> torch.Tensor:
    """The SSD default boxes for all feature maps.

    Args:
        feature_maps: side length (cells) of each square feature map, e.g. 38, 19, ... 1.
        image_size: side of the square network input in pixels.
        steps: pixel stride of each feature map (cell centre k is at (k + 0.5) * step).
        min_sizes, max_sizes: box sides in pixels per feature map; the second square box
            has side sqrt(min * max).
        aspect_ratios: per feature map, the ratios ar giving the box pairs
            (s*sqrt(ar), s/sqrt(ar)) and (s/sqrt(ar), s*sqrt(ar)) with s = min size.
        clip: clamp every coordinate to [0, 1].

    Returns:
        Tensor[P, 4] of (cx, cy, w, h) normalised by `image_size`, ordered by feature map,
        row, column, then [min, sqrt(min*max), ar pairs in the order given].
    """
    per_map = []
    for size, step, min_size, max_size, ratios in zip(
        feature_maps, steps, min_sizes, max_sizes, aspect_ratios
    ):
        centres = (torch.arange(size, dtype=torch.float64) + 0.5) * step / image_size
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # (size, size) each
        shapes = _box_shapes(min_size / image_size, max_size / image_size, ratios)  # (A, 2)
        num_shapes = shapes.shape[0]
        centre_xy = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # (HW, 1, 2)
        centre_xy = centre_xy.expand(-1, num_shapes, 2)  # (HW, A, 2)
        wh = shapes.unsqueeze(0).expand(centre_xy.shape[0], -1, -1)  # (HW, A, 2)
        per_map.append(torch.cat([centre_xy, wh], dim=-1).reshape(-1, 4))  # (HW*A, 4)
    priors = torch.cat(per_map, dim=0).float()
    return priors.clamp_(0.0, 1.0) if clip else priors


def _box_shapes(min_side: float, max_side: float, ratios: Sequence[float]) -> torch.Tensor:
    """(w, h) of the default boxes at one cell: Tensor[2 + 2*len(ratios), 2]."""
    shapes = [(min_side, min_side)]
    big = math.sqrt(min_side * max_side)
    shapes.append((big, big))
    for ratio in ratios:
        root = math.sqrt(ratio)
        shapes.append((min_side * root, min_side / root))
        shapes.append((min_side / root, min_side * root))
    return torch.tensor(shapes, dtype=torch.float64)


def priors_from_config(prior_cfg, image_size: int) -> torch.Tensor:
    """`default_boxes` with the arguments of a `model.priors` config section."""
    return default_boxes(
        feature_maps=prior_cfg.feature_maps,
        image_size=image_size,
        steps=prior_cfg.steps,
        min_sizes=prior_cfg.min_sizes,
        max_sizes=prior_cfg.max_sizes,
        aspect_ratios=prior_cfg.aspect_ratios,
        clip=prior_cfg.clip,
    )


# ------------------------------------------------------------------------ derived settings
# The settings `derive_prior_settings` fills in, in the order of a config's model.priors.
PRIOR_KEYS = ("feature_maps", "steps", "min_sizes", "max_sizes", "aspect_ratios")


@dataclass(frozen=True)
class BoxScales:
    """Default-box sides in whole percent of the image side (the SSD paper's linear scale rule
    as the published SSD300 and SSD512 apply it): the first map's boxes are `first`, the other
    maps' grow from `smallest` to `largest` in equal steps rounded down to a whole percent."""

    first: int
    smallest: int
    largest: int


SSD300_SCALES = BoxScales(first=10, smallest=20, largest=90)
SSD512_SCALES = BoxScales(first=7, smallest=15, largest=90)
LARGE_INPUT = 512  # inputs of this side or more use SSD512_SCALES, smaller ones SSD300_SCALES
PERCENT = 100
# Maps with at least this many cells a side keep the network's power-of-two stride as their
# step; smaller ones (shrunk by unpadded convolutions: SSD300's 3x3 and 1x1) spread their cells
# evenly over the image.
MIN_STRIDE_GRID_CELLS = 5
# The aspect ratios of the first map and of the last two (as in SSD300 and SSD512), and of
# every other map.
EDGE_MAP_RATIOS = (2,)
INNER_MAP_RATIOS = (2, 3)
EDGE_MAPS_AT_END = 2


def derived_steps(feature_maps: Sequence[int], image_size: int) -> list[float]:
    """The pixel step of each map: image_size / map rounded to the nearest power of two for maps
    of at least MIN_STRIDE_GRID_CELLS cells, image_size / map for smaller ones.

    SSD300 (maps 38, 19, 10, 5, 3, 1): 8, 16, 32, 64, 100, 300; SSD512: 8, 16, ... 512.
    """
    steps = []
    for size in feature_maps:
        spread = image_size / size
        steps.append(float(2 ** round(math.log2(spread))) if size >= MIN_STRIDE_GRID_CELLS else spread)
    return steps


def derived_sizes(num_maps: int, image_size: int) -> tuple[list[float], list[float]]:
    """(min_sizes, max_sizes) in pixels for `num_maps` maps, by the linear scale rule of
    `BoxScales` (SSD300_SCALES below LARGE_INPUT, else SSD512_SCALES). Each map's max size is
    the next map's min size; the last one's is one more step.

    SSD300: min 30, 60, 111, 162, 213, 264 and max 60, 111, ... 315.
    """
    scales = SSD512_SCALES if image_size >= LARGE_INPUT else SSD300_SCALES
    later = num_maps - 1  # the maps after the first
    interval = (scales.largest - scales.smallest) // max(later - 1, 1)
    min_percents = [scales.first] + [scales.smallest + k * interval for k in range(later)]
    max_percents = [scales.smallest] + [scales.smallest + (k + 1) * interval for k in range(later)]
    return ([image_size * p / PERCENT for p in min_percents],
            [image_size * p / PERCENT for p in max_percents])


def default_aspect_ratios(num_maps: int) -> list[list[int]]:
    """EDGE_MAP_RATIOS for the first map and the last two, INNER_MAP_RATIOS for the others."""
    return [list(EDGE_MAP_RATIOS if k == 0 or k >= num_maps - EDGE_MAPS_AT_END else INNER_MAP_RATIOS)
            for k in range(num_maps)]


def derive_prior_settings(feature_maps: Sequence[int], image_size: int) -> dict[str, list]:
    """The PRIOR_KEYS settings for a backbone whose source maps have sides `feature_maps` at
    input side `image_size`; for VGG16 at 300 and 512 px they are the published SSD300 and
    SSD512 ones."""
    min_sizes, max_sizes = derived_sizes(len(feature_maps), image_size)
    return {"feature_maps": list(feature_maps), "steps": derived_steps(feature_maps, image_size),
            "min_sizes": min_sizes, "max_sizes": max_sizes,
            "aspect_ratios": default_aspect_ratios(len(feature_maps))}


def prior_settings_yaml(settings: Mapping[str, Any]) -> str:
    """`settings` as the YAML block of a config file (model: priors: ...), one line per key."""
    lines = ["model:", "  priors:"]
    for key, value in settings.items():
        text = yaml.safe_dump(_plain_numbers(value), default_flow_style=True, width=math.inf)
        lines.append(f"    {key}: {text.splitlines()[0]}")
    return "\n".join(lines) + "\n"


def _plain_numbers(value: Any) -> Any:
    """Whole floats as ints (nested lists too): 8.0 -> 8, 35.84 stays."""
    if isinstance(value, list):
        return [_plain_numbers(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
