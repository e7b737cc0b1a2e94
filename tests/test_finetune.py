"""Fine-tuning a trained detector to another class list (--weights of other classes) and
model.freeze, through the trainer and scripts/train.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script

from ssd.config import ConfigError, load_config
from ssd.data.voc import VOC_CLASSES
from ssd.engine.checkpoint import checkpoint_path, load_checkpoint
from ssd.engine.freeze import freeze_modules, frozen_batchnorm_layers
from ssd.engine.trainer import Trainer
from ssd.modeling import build_model
from ssd.weights import WeightsError, load_training_weights

SMALL_CONFIG = Path(__file__).resolve().parent / "configs" / "ssd7_160.yaml"  # SSD7, 160 px
SUBSET = ["person", "car", "dog"]
IMAGE_SIZE = 64  # of the written images (the model resizes them to 160 px)
OBJECT_BOX = (9, 12, 50, 57)  # 1-based pixel box of the one object per image
FAST_RUN = {
    "data.num_workers": 0, "solver.batch_size": 2, "solver.max_iter": 2, "solver.warmup_iters": 1,
    "solver.lr_steps": [1], "train.amp": False, "train.channels_last": False, "train.log_period": 1,
    "train.checkpoint_period": 2, "train.eval_period": 0,
}


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="ssd")


def write_voc(root: Path, classes: list[str], images: int = 4) -> Path:
    """A VOC2007 trainval of `images` solid-colour images with one object each, cycling
    through `classes`; returns the VOCdevkit folder."""
    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{index:06d}" for index in range(images)]
    for index, image_id in enumerate(ids):
        image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 40 * index, np.uint8)
        xmin, ymin, xmax, ymax = OBJECT_BOX
        image[ymin:ymax, xmin:xmax] = (200, 100, 30)
        cv2.imwrite(str(year / "JPEGImages" / f"{image_id}.png"), image)
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{IMAGE_SIZE}</width><height>{IMAGE_SIZE}</height>"
            f"<depth>3</depth></size><object><name>{classes[index % len(classes)]}</name>"
            f"<difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>")
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


def voc_overrides(devkit: Path, classes: list[str], **extra) -> list[str]:
    values = {"data.format": "voc", "data.root": str(devkit), "data.train_sets": [["2007", "trainval"]],
              "data.class_names": classes, "model.num_classes": len(classes) + 1, **FAST_RUN, **extra}
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


@pytest.fixture(scope="module")
def voc21(tmp_path_factory):
    """A 21-class SSD7 (VOC's classes), saved as a classic state_dict and as a checkpoint."""
    folder = tmp_path_factory.mktemp("voc21")
    cfg = load_config(SMALL_CONFIG, overrides=voc_overrides(folder, list(VOC_CLASSES)))
    torch.manual_seed(21)
    model = build_model(cfg).eval()
    torch.save(model.state_dict(), folder / "classic.pth")
    checkpoint = {"model": model.state_dict(), "config": cfg.to_dict(), "iteration": 9}  # as the trainer's
    torch.save(checkpoint, folder / "checkpoint.pth")
    return model.state_dict(), folder


def class_rows(tensor: torch.Tensor, anchors: int, column: int) -> torch.Tensor:
    """Rows of one class column of a conf tensor [A*C, ...] -> [A, ...]."""
    return tensor.view(anchors, -1, *tensor.shape[1:])[:, column]  # (A*C, ...) -> (A, C, ...)


@pytest.mark.parametrize("file_name", ["classic.pth", "checkpoint.pth"])
def test_fine_tune_21_classes_to_a_subset(voc21, tmp_path, caplog, file_name):
    source, folder = voc21
    cfg = load_config(SMALL_CONFIG, overrides=voc_overrides(write_voc(tmp_path, SUBSET), SUBSET))
    trainer = Trainer.from_config(cfg, output_dir=tmp_path / "run", device="cpu", progress=False,
                                  init_weights=folder / file_name)
    state = trainer.model.state_dict()
    for key, value in state.items():  # backbone and localisation heads: the source's
        if not key.startswith("conf."):
            assert torch.equal(value, source[key]), key
    anchors = trainer.model.num_anchors_per_location()
    columns = {0: 0, **{SUBSET.index(name) + 1: VOC_CLASSES.index(name) + 1 for name in SUBSET}}
    for head, count in enumerate(anchors):
        for suffix in ("weight", "bias"):
            key = f"conf.{head}.{suffix}"
            assert state[key].shape[0] == count * (len(SUBSET) + 1)
            for new_column, old_column in columns.items():
                assert torch.equal(class_rows(state[key], count, new_column),
                                   class_rows(source[key], count, old_column)), (key, new_column)
    assert "copied classes: person, car, dog" in caplog.text
    assert "new classes (initialised): none" in caplog.text
    assert f"loaded {len(state) - 2 * len(anchors)} tensors unchanged" in caplog.text
    trainer.train()
    assert trainer.iteration == 2 and torch.isfinite(trainer.losses["loss"])


def test_train_script_fine_tunes_with_one_command(voc21, tmp_path, caplog):
    """python scripts/train.py --config my.yaml --weights a_detector.pth, my.yaml listing a new
    class (lorry, renamed from bus by model.class_map) and one without a source (kangaroo)."""
    _, folder = voc21
    classes = ["person", "lorry", "kangaroo"]
    devkit = write_voc(tmp_path, classes)
    config = tmp_path / "my.yaml"
    config.write_text(f"_base_: {SMALL_CONFIG}\n"
                      f"model: {{num_classes: 4, class_map: {{lorry: bus}}}}\n"
                      f"data: {{format: voc, root: {devkit}, train_sets: [[2007, trainval]], "
                      f"class_names: [person, lorry, kangaroo]}}\n")
    argv = ["--config", str(config), "--weights", str(folder / "checkpoint.pth"), "--device", "cpu",
            "--output", str(tmp_path / "run"), "--no-progress",
            "--opts", *[item for item in voc_overrides(devkit, classes)
                        if item.startswith(("solver.", "train."))]]
    assert load_script("train").main(argv) == 0
    assert "copied classes: person, lorry<-bus" in caplog.text
    assert "new classes (initialised): kangaroo" in caplog.text
    saved = load_checkpoint(checkpoint_path(tmp_path / "run", 2))
    assert saved["config"]["data"]["class_names"] == classes
    assert saved["model"]["conf.0.bias"].shape[0] == 4 * (len(classes) + 1)  # 4 anchors per cell


def test_same_classes_load_strictly_and_an_architecture_mismatch_is_an_error(voc21, tmp_path):
    source, folder = voc21
    same = build_model(load_config(SMALL_CONFIG, overrides=voc_overrides(folder, list(VOC_CLASSES))))
    assert load_training_weights(same, folder / "classic.pth", list(VOC_CLASSES)) is None
    assert all(torch.equal(value, source[key]) for key, value in same.state_dict().items())
    other_widths = build_model(load_config(SMALL_CONFIG, overrides=[
        *voc_overrides(folder, SUBSET), "model.channels=[16, 16, 16, 16, 16, 16, 16]"]))
    with pytest.raises(WeightsError) as err:
        load_training_weights(other_widths, folder / "classic.pth", SUBSET)
    message = str(err.value)
    assert "base.0.weight: checkpoint [32, 3, 3, 3] vs model [16, 3, 3, 3]" in message
    assert "model.backbone, model.image_size and model.priors" in message


def test_class_map_naming_an_unknown_class_stops_with_its_name(voc21, tmp_path):
    _, folder = voc21
    model = build_model(load_config(SMALL_CONFIG, overrides=voc_overrides(folder, SUBSET)))
    with pytest.raises(ValueError, match="'truck' .* is not one of the source classes"):
        load_training_weights(model, folder / "classic.pth", SUBSET, {"car": "truck"})


def test_frozen_parameters_stay_and_are_not_optimised(tmp_path, caplog):
    classes = ["person", "car"]
    cfg = load_config(SMALL_CONFIG, overrides=voc_overrides(write_voc(tmp_path, classes), classes,
                                                            **{"model.freeze": ["base"]}))
    trainer = Trainer.from_config(cfg, output_dir=tmp_path / "run", device="cpu", progress=False)
    model = trainer.model
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimised = {id(param) for group in trainer.optimizer.param_groups for param in group["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in optimised) == (not name.startswith("base.")), name
        assert param.requires_grad == (not name.startswith("base.")), name
    frozen_count = sum(p.numel() for name, p in model.named_parameters() if name.startswith("base."))
    assert f"{frozen_count} of {sum(p.numel() for p in model.parameters())} parameters frozen" in caplog.text
    trainer.train()
    after = model.state_dict()
    for key, value in after.items():  # running statistics included: frozen BatchNorm is in eval
        if key.startswith("base."):
            assert torch.equal(value, before[key]), key
    assert not torch.equal(after["conf.0.weight"], before["conf.0.weight"])
    batch_norms = frozen_batchnorm_layers(model, ["base"])
    assert batch_norms and model.training and not any(layer.training for layer in batch_norms)
    assert f"{len(batch_norms)} BatchNorm layers there keep their running statistics" in caplog.text


def test_freeze_prefix_matching_nothing_names_it_and_the_modules():
    model = build_model(load_config(SMALL_CONFIG))
    with pytest.raises(ConfigError) as err:
        freeze_modules(model, ["vgg"])
    assert str(err.value) == ("model.freeze: 'vgg' matches no parameter of SSD7; its top-level "
                              "modules: base, loc, conf")


def test_freeze_prefix_is_a_whole_module_name():
    model = build_model(load_config(SMALL_CONFIG))
    freeze_modules(model, ["conf.0"])
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen == {"conf.0.weight", "conf.0.bias"}  # not conf.0x..., not conf.1


@pytest.mark.parametrize("override, message", [
    ("model.class_map={lorry: 3}", "'model.class_map' must map new class names to source class names"),
    ("model.class_map=[lorry, bus]", "'model.class_map' .* expects dict or null"),
    ("model.freeze=[base, 3]", "'model.freeze' must be a list of module-name prefixes"),
    ("model.freeze=base", "'model.freeze' .* expects list"),
])
def test_fine_tuning_keys_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMALL_CONFIG, overrides=[override])
