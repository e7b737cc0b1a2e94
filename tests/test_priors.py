import json
import logging
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS
from trainer_helpers import tiny_cfg

from ssd.config import load_config
from ssd.engine import checkpoint as ckpt
from ssd.engine.trainer import Trainer
from ssd.modeling import build_model, resolve_priors
from ssd.predictor import Predictor
from ssd.priors import boxes_per_location, default_boxes, derive_prior_settings, priors_from_config
from ssd.weights import read_checkpoint


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


# ------------------------------------------------------------------------ derived priors
TINY_SSD7 = ["model.backbone=ssd7", "model.channels=[4, 4, 4, 4, 4, 4, 4]"]


@pytest.mark.parametrize("size, published", [(300, "voc300.yaml"), (512, "voc512.yaml")])
def test_vgg16_derives_the_published_priors(size, published):
    derived = resolve_priors(load_config(overrides=[f"model.image_size={size}"]))
    classic = load_config(CONFIGS / published)
    assert derived.model.priors == classic.model.priors
    assert torch.equal(priors_from_config(derived.model.priors, size),
                       priors_from_config(classic.model.priors, size))


def test_ssd7_at_300_px_derives_priors_from_its_feature_maps():
    model = build_model(load_config(overrides=[*TINY_SSD7, "model.image_size=300"]))
    with torch.no_grad():
        features = model.extract_features(torch.zeros(1, 3, 300, 300))
        loc, _ = model(torch.zeros(1, 3, 300, 300))
    sizes = [feature.shape[-1] for feature in features]
    assert sizes == model.prior_settings["feature_maps"] == [37, 18, 9, 4]
    assert model.prior_settings == {**derive_prior_settings(sizes, 300), "clip": True}
    cells = sum(size * size * boxes_per_location(ratios)
                for size, ratios in zip(sizes, model.prior_settings["aspect_ratios"]))
    assert model.priors.shape == (cells, 4) and loc.shape[1] == cells


def test_prior_keys_set_in_the_config_are_kept():
    model = build_model(load_config(overrides=[*TINY_SSD7, "model.image_size=300",
                                               "model.priors.min_sizes=[20, 40, 80, 160]"]))
    assert model.prior_settings["min_sizes"] == [20, 40, 80, 160]
    assert model.prior_settings["steps"] == [8, 16, 32, 75]
    assert "min_sizes" not in model.derived_prior_keys


def test_a_prior_key_of_the_wrong_length_names_it():
    with pytest.raises(ValueError, match=r"4 source feature maps but model.priors.steps lists 2"):
        build_model(load_config(overrides=[*TINY_SSD7, "model.priors.steps=[8, 16]"]))


def test_feature_map_mismatch_prints_the_priors_that_fit():
    overrides = ["model.image_size=300", "model.channels=[4, 4, 4, 4, 4, 4, 4]"]
    with pytest.raises(ValueError) as raised:
        build_model(load_config(CONFIGS / "shapes.yaml", overrides=overrides))  # its maps: 128 px
    first_line, block = str(raised.value).split("\n", 1)
    assert "block4" in first_line and "is 37x37" in first_line and "expects 16x16" in first_line
    fitting = yaml.safe_load(block)["model"]["priors"]
    assert fitting == {**derive_prior_settings([37, 18, 9, 4], 300), "clip": True}
    pasted = load_config(CONFIGS / "shapes.yaml",
                         overrides=[*overrides, f"model.priors={json.dumps(fitting)}"])
    assert build_model(pasted).prior_settings == fitting


def test_checkpoint_of_derived_priors_rebuilds_them(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ssd.engine.build")
    cfg = tiny_cfg(tmp_path / "shapes", **{"model.priors": None, "model.image_size": 100,
                                           "solver.max_iter": 1, "train.checkpoint_period": 1})
    trainer = Trainer.from_config(cfg, output_dir=tmp_path / "run", device="cpu", progress=False)
    trainer.train()
    assert trainer.model.prior_settings["feature_maps"] == [12, 6, 3, 1]
    logged = [r.getMessage() for r in caplog.records if "model.priors derived" in r.getMessage()]
    assert len(logged) == 1 and "feature_maps [12, 6, 3, 1]" in logged[0]

    path = ckpt.checkpoint_path(tmp_path / "run", 1)
    _, stored = read_checkpoint(path)
    assert stored["model"]["priors"] == trainer.model.prior_settings  # every key, none null
    predictor = Predictor(path, device="cpu", precision="fp32")
    assert torch.equal(predictor.model.priors, trainer.model.priors.cpu())
    assert isinstance(predictor.predict(np.zeros((100, 100, 3), dtype=np.uint8)), list)
