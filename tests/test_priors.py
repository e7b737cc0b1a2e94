import math

import pytest
import torch
from conftest import CONFIGS

from ssd.config import load_config
from ssd.priors import boxes_per_location, default_boxes, priors_from_config


def test_tiny_config_value_by_value():
    # 2x2 map on a 100 px image, step 50, min 20, max 80, ratio 2; then a 1x1 map, no ratios.
    priors = default_boxes(
        feature_maps=[2, 1], image_size=100, steps=[50, 100], min_sizes=[20, 60],
        max_sizes=[80, 90], aspect_ratios=[[2], []], clip=False,
    )
    s, big, r2 = 0.2, math.sqrt(0.2 * 0.8), math.sqrt(2)
    per_cell = [(s, s), (big, big), (s * r2, s / r2), (s / r2, s * r2)]
    expected = []
    for cy in (0.25, 0.75):  # rows first, then columns
        for cx in (0.25, 0.75):
            expected += [(cx, cy, w, h) for w, h in per_cell]
    expected += [(0.5, 0.5, 0.6, 0.6), (0.5, 0.5, math.sqrt(0.6 * 0.9), math.sqrt(0.6 * 0.9))]
    assert priors.shape == (18, 4)
    torch.testing.assert_close(priors, torch.tensor(expected), atol=1e-6, rtol=0)


def test_clip_keeps_boxes_inside_unit_square():
    raw = default_boxes([1], 100, [100], [90], [200], [[3]], clip=False)
    clipped = default_boxes([1], 100, [100], [90], [200], [[3]], clip=True)
    assert raw.max() > 1.0
    assert clipped.max() == 1.0 and clipped.min() >= 0.0
    assert torch.equal(clipped, raw.clamp(0, 1))


@pytest.mark.parametrize("path, count", [(CONFIGS / "voc300.yaml", 8732),
                                         (CONFIGS / "voc512.yaml", 24564),
                                         (CONFIGS / "coco300.yaml", 8732)])
def test_published_prior_counts(path, count):
    cfg = load_config(path)
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    assert priors.shape == (count, 4)


def test_voc300_first_and_last_priors():
    cfg = load_config(CONFIGS / "voc300.yaml")
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    # First cell of conv4_3: centre 4/300, min box 30/300.
    torch.testing.assert_close(priors[0], torch.tensor([4 / 300, 4 / 300, 0.1, 0.1]))
    # Last prior: 1x1 map, ratio 2 pair, second of the pair (tall box).
    side = 264 / 300
    torch.testing.assert_close(
        priors[-1], torch.tensor([0.5, 0.5, side / math.sqrt(2), min(1.0, side * math.sqrt(2))])
    )


def test_boxes_per_location_derived_from_ratios():
    assert boxes_per_location([2]) == 4
    assert boxes_per_location([2, 3]) == 6
