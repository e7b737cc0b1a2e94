"""Weight files: VGG16 -> reduced-fc conversion, checkpoints, classic state_dicts, clear errors."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_script

from ssd.config import load_config
from ssd.modeling import build_model
from ssd.weights import (
    WeightsError,
    build_model_from_weights,
    convert_torchvision_vgg16,
    fc6_to_conv6,
    fc7_to_conv7,
    load_model_weights,
    load_vgg_backbone,
    read_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONVERT_SCRIPT = REPO_ROOT / "scripts" / "convert_vgg.py"
# Where the 13 convolutions and conv6/conv7 sit in the classic vgg16_reducedfc.pth.
REDUCED_FC_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33]
# Where torchvision's vgg16 keeps its 13 convolutions (features.N).
TORCHVISION_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def tiny_torchvision_vgg16(channels=(3, 4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8), fc=32, seed=0):
    """A VGG16 state_dict in torchvision's layout with tiny layers (same structure)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_in, c_out) in zip(TORCHVISION_CONVS, zip(channels[:-1], channels[1:])):
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen)
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=gen)
    shapes = {0: (fc, channels[-1] * 49), 3: (fc, fc), 6: (10, fc)}
    for index, shape in shapes.items():
        state[f"classifier.{index}.weight"] = torch.randn(*shape, generator=gen)
        state[f"classifier.{index}.bias"] = torch.randn(shape[0], generator=gen)
    return state


def fc6_on_dilated_taps(fc6_weight, fc6_bias, features, row, col):
    """fc6 applied directly to the 7x7 window whose taps 0, 3, 6 read the input 6 pixels apart.

    The window holds features[:, row + 6 * (a - 1), col + 6 * (b - 1)] at (3a, 3b) for a, b in
    0..2 (zero outside the map, as conv padding) and zero elsewhere: exactly what conv6 sees.
    """
    channels, height, width = features.shape
    window = torch.zeros(channels, 7, 7)
    for a in range(3):
        for b in range(3):
            y, x = row + 6 * (a - 1), col + 6 * (b - 1)
            if 0 <= y < height and 0 <= x < width:
                window[:, 3 * a, 3 * b] = features[:, y, x]
    return fc6_weight @ window.flatten() + fc6_bias  # torchvision flattens (C, H, W)


# ---------------------------------------------------------------------------- conversion
def test_converted_conv6_equals_fc6_on_the_dilated_taps():
    state = tiny_torchvision_vgg16()
    converted = convert_torchvision_vgg16(state)
    features = torch.randn(1, 8, 15, 15)  # conv5_3 output after the stride-1 pool5
    conv6 = F.conv2d(features, converted["31.weight"], converted["31.bias"], padding=6, dilation=6)
    assert conv6.shape == (1, 8, 15, 15)  # 32 fc6 units / 4
    for row, col in [(7, 7), (0, 0), (3, 12), (14, 5), (6, 6)]:
        expected = fc6_on_dilated_taps(state["classifier.0.weight"], state["classifier.0.bias"],
                                       features[0], row, col)[::4]  # every 4th unit
        torch.testing.assert_close(conv6[0, :, row, col], expected, rtol=1e-5, atol=1e-5)


def test_converted_conv7_is_fc7_on_every_fourth_unit():
    weight, bias = torch.randn(32, 32), torch.randn(32)
    conv_weight, conv_bias = fc7_to_conv7(weight, bias)
    assert conv_weight.shape == (8, 8, 1, 1)
    conv6_out = torch.randn(1, 8, 5, 5)
    conv7 = F.conv2d(conv6_out, conv_weight, conv_bias)
    spread = torch.zeros(32)
    spread[::4] = conv6_out[0, :, 2, 3]  # conv6 keeps fc6 units 0, 4, 8, ...
    torch.testing.assert_close(conv7[0, :, 2, 3], (weight @ spread + bias)[::4])


def test_conversion_places_every_layer_at_its_reduced_fc_index():
    state = tiny_torchvision_vgg16()
    converted = convert_torchvision_vgg16({f"module.{k}": v for k, v in state.items()})
    assert set(converted) == {f"{i}.{p}" for i in REDUCED_FC_CONVS for p in ("weight", "bias")}
    for src, dst in zip(TORCHVISION_CONVS, REDUCED_FC_CONVS):
        assert torch.equal(converted[f"{dst}.weight"], state[f"features.{src}.weight"])
        assert torch.equal(converted[f"{dst}.bias"], state[f"features.{src}.bias"])
    # Slices of fc6 must not drag its whole storage into the saved file.
    for tensor in converted.values():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    expected6 = state["classifier.0.weight"].view(32, 8, 7, 7)[::4, :, ::3, ::3]
    assert torch.equal(converted["31.weight"], expected6)
    assert torch.equal(converted["33.bias"], state["classifier.3.bias"][::4])


def test_fc_conversion_shapes_for_vgg16():
    fc6 = fc6_to_conv6(torch.empty(4096, 512 * 7 * 7, device="meta"), torch.empty(4096, device="meta"))
    fc7 = fc7_to_conv7(torch.empty(4096, 4096, device="meta"), torch.empty(4096, device="meta"))
    assert [tuple(t.shape) for t in (*fc6, *fc7)] == [(1024, 512, 3, 3), (1024,),
                                                      (1024, 1024, 1, 1), (1024,)]
    with pytest.raises(WeightsError, match="7x7 grid"):
        fc6_to_conv6(torch.zeros(8, 50), torch.zeros(8))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update({"features.1.running_mean": torch.zeros(4)}), "vgg16_bn"),
        (lambda s: s.pop("classifier.0.weight"), "torchvision's VGG16 layout"),
        (lambda s: [s.pop(k) for k in ("features.28.weight", "features.28.bias")], "found 12"),
        (lambda s: s.update({"classifier.0.weight": torch.zeros(32, 8 * 36)}), "gives 8 x 7 x 7"),
    ],
)
def test_conversion_rejects_other_layouts(edit, message):
    state = tiny_torchvision_vgg16()
    edit(state)
    with pytest.raises(WeightsError, match=message):
        convert_torchvision_vgg16(state)


def test_conversion_refuses_an_already_converted_file():
    converted = convert_torchvision_vgg16(tiny_torchvision_vgg16())
    with pytest.raises(WeightsError, match="already a reduced-fc VGG16"):
        convert_torchvision_vgg16(converted)


# ------------------------------------------------------------------------ VGG backbone
@pytest.fixture(scope="module")
def voc300_cfg():
    return load_config(REPO_ROOT / "configs" / "voc300.yaml")


@pytest.fixture(scope="module")
def vgg_model(voc300_cfg):
    torch.manual_seed(0)
    return build_model(voc300_cfg).eval()


@pytest.fixture(scope="module")
def scratch_model(voc300_cfg):
    """A second SSD300 to load into (loading into `vgg_model` would change the reference)."""
    return build_model(voc300_cfg)


@pytest.fixture(scope="module")
def classic_file(vgg_model, tmp_path_factory):
    """The model's state_dict saved as the classic checkpoints are: a bare state_dict."""
    path = tmp_path_factory.mktemp("classic") / "ssd300_classic.pth"
    torch.save(vgg_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference_output(vgg_model):
    image = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        return image, vgg_model(image)


@pytest.mark.parametrize("prefix", ["", "vgg.", "module.vgg."])
def test_load_vgg_backbone_accepts_reduced_fc_files(scratch_model, tmp_path, prefix):
    backbone = {key: torch.randn_like(value)
                for key, value in scratch_model.vgg.state_dict().items()}
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save({prefix + key: value for key, value in backbone.items()}, path)
    load_vgg_backbone(scratch_model, path)
    loaded = scratch_model.vgg.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in backbone.items())


def test_load_vgg_backbone_takes_the_vgg_part_of_a_detector(scratch_model, vgg_model,
                                                            classic_file):
    heads = scratch_model.conf[0].weight.clone()
    load_vgg_backbone(scratch_model, classic_file)
    assert torch.equal(scratch_model.vgg[31].weight, vgg_model.vgg[31].weight)
    assert torch.equal(scratch_model.conf[0].weight, heads)  # heads untouched


def test_load_vgg_backbone_missing_file_says_how_to_make_it(vgg_model, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_vgg_backbone(vgg_model, tmp_path / "vgg16_reducedfc.pth")
    for text in ("weights/vgg16_reducedfc.pth", "scripts/convert_vgg.py", "vgg16-397923af.pth",
                 "model.pretrained=null"):
        assert text in str(err.value)


def test_load_vgg_backbone_lists_shape_differences(vgg_model, tmp_path):
    backbone = dict(vgg_model.vgg.state_dict())
    backbone["31.weight"] = torch.zeros(1024, 512, 7, 7)  # fc6 not reduced
    del backbone["33.bias"]
    torch.save(backbone, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as err:
        load_vgg_backbone(vgg_model, tmp_path / "bad.pth")
    message = str(err.value)
    assert "31.weight: checkpoint [1024, 512, 7, 7] vs model [1024, 512, 3, 3]" in message
    assert "missing keys (in the model, not in the file) (1): 33.bias" in message


def test_load_vgg_backbone_points_torchvision_files_to_the_converter(vgg_model, tmp_path):
    torch.save(tiny_torchvision_vgg16(), tmp_path / "vgg16-397923af.pth")
    with pytest.raises(WeightsError, match="convert it with python scripts/convert_vgg.py"):
        load_vgg_backbone(vgg_model, tmp_path / "vgg16-397923af.pth")


def test_load_vgg_backbone_needs_a_vgg_model(tmp_path):
    ssd7 = build_model(load_config(REPO_ROOT / "configs" / "shapes.yaml"))
    with pytest.raises(WeightsError, match="SSD7 has no VGG layers"):
        load_vgg_backbone(ssd7, tmp_path / "any.pth")


# ---------------------------------------------------------- detector weights and config
def test_classic_state_dict_gives_identical_outputs(vgg_model, reference_output, classic_file):
    model, cfg = build_model_from_weights(classic_file)  # no config: the built-in SSD300 VOC
    assert cfg.model.backbone == "vgg16" and cfg.model.num_classes == 21
    assert not model.training
    image, (loc, conf) = reference_output
    with torch.no_grad():
        new_loc, new_conf = model(image)
    assert torch.equal(new_loc, loc) and torch.equal(new_conf, conf)


def test_dataparallel_state_dict_in_legacy_format_gives_identical_outputs(
    vgg_model, scratch_model, reference_output, tmp_path
):
    # Saved from DataParallel ("module." keys) in the pre-1.6 format of the 2017 checkpoints.
    state = {f"module.{key}": value for key, value in vgg_model.state_dict().items()}
    torch.save(state, tmp_path / "ssd300.pth", _use_new_zipfile_serialization=False)
    loaded, config = read_checkpoint(tmp_path / "ssd300.pth")
    assert config is None and set(loaded) == set(vgg_model.state_dict())
    load_model_weights(scratch_model.eval(), loaded, source="ssd300.pth")
    image, (loc, conf) = reference_output
    with torch.no_grad():
        new_loc, new_conf = scratch_model(image)
    assert torch.equal(new_loc, loc) and torch.equal(new_conf, conf)


def trainer_style_checkpoint(model, cfg):
    """What the trainer saves: model, config and training state with numpy RNG state."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return {
        "model": model.state_dict(), "config": cfg.to_dict(), "iteration": 7,
        "optimizer": optimizer.state_dict(), "best_map": 0.25,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()},
    }


def test_project_checkpoint_restores_its_config_and_outputs(tmp_path, voc300_cfg):
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml", overrides=["test.top_k=50"])
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    torch.save(trainer_style_checkpoint(model, cfg), tmp_path / "best.pth")

    state, stored = read_checkpoint(tmp_path / "best.pth")
    assert stored == cfg.to_dict()
    assert set(state) == set(model.state_dict())

    # The stored config wins over the one given (eval.py passes its fallback config).
    loaded, loaded_cfg = build_model_from_weights(tmp_path / "best.pth", cfg=voc300_cfg)
    assert loaded_cfg == cfg and loaded_cfg.test.top_k == 50
    image = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(image), loaded(image)))


def test_checkpoint_of_a_ddp_model_loads(tmp_path):
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml")
    model = build_model(cfg)
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"model": state, "config": cfg.dump()}, tmp_path / "ddp.pth")  # YAML text too
    loaded, loaded_cfg = build_model_from_weights(tmp_path / "ddp.pth")
    assert loaded_cfg == cfg
    assert torch.equal(loaded.conf[3].weight, model.conf[3].weight)


def test_missing_weights_say_how_to_get_some(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_checkpoint(tmp_path / "ssd300.pth")
    assert "python scripts/train.py --config configs/shapes.yaml" in str(err.value)
    assert "weights/" in str(err.value)


def test_wrong_class_count_is_explained(tmp_path):
    seed_widths = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"  # 64 channels into conf.0
    cfg7 = load_config(seed_widths)
    cfg3 = load_config(seed_widths, overrides=["model.num_classes=3", "data.class_names=[circle, square]"])
    state = build_model(cfg7).state_dict()
    with pytest.raises(WeightsError) as err:
        load_model_weights(build_model(cfg3), state, source="shapes.pth")
    message = str(err.value)
    # SSD7 / shapes: 4 anchors per cell on the first map, 64 channels.
    assert ("conf.0.weight: checkpoint [28, 64, 3, 3] vs model [12, 64, 3, 3] — trained for 7 "
            "classes, the config builds 3") in message
    assert "shape mismatches (8)" in message and "missing keys" not in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml")
    model = build_model(cfg)
    state = dict(model.state_dict())
    del state["loc.2.bias"]
    state["L2Norm.weight"] = torch.ones(512)
    with pytest.raises(WeightsError) as err:
        load_model_weights(model, state, source="odd.pth")
    message = str(err.value)
    assert "Weights from odd.pth do not fit the model (SSD7)" in message
    assert "missing keys (in the model, not in the file) (1): loc.2.bias" in message
    assert "unexpected keys (in the file, not in the model) (1): L2Norm.weight" in message


def test_weights_of_another_backbone_are_named(classic_file):
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml")
    with pytest.raises(WeightsError, match="for backbone vgg16; the config builds ssd7"):
        build_model_from_weights(classic_file, cfg=cfg)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_text("not a checkpoint"), "is not a PyTorch weights file"),
        (lambda p: torch.save(torch.nn.Linear(2, 2), p), "pickled Python object .*Linear"),
        (lambda p: torch.save([torch.zeros(1)], p), "holds a list"),
        (lambda p: torch.save({"epoch": 3, "w": torch.zeros(1)}, p), "not tensors: epoch"),
        (lambda p: torch.save({}, p), "is not a state_dict"),
        (lambda p: torch.save({"model": {}, "config": 3}, p), "'config' must be a nested dict"),
    ],
)
def test_other_files_are_refused_clearly(tmp_path, write, message):
    path = tmp_path / "file.pth"
    write(path)
    with pytest.raises(WeightsError, match=message):
        read_checkpoint(path)


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="is a folder"):
        read_checkpoint(tmp_path)


# ------------------------------------------------------------------- scripts/convert_vgg.py
def run_convert(*args):
    return subprocess.run([sys.executable, str(CONVERT_SCRIPT), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def load_convert_script():
    return load_script("convert_vgg")


def test_convert_script_refuses_a_file_that_is_not_vgg16(tmp_path):
    torch.save(tiny_torchvision_vgg16(), tmp_path / "tiny.pth")  # VGG16 structure, wrong sizes
    with pytest.raises(WeightsError) as err:
        load_convert_script().main([str(tmp_path / "tiny.pth"), str(tmp_path / "out.pth")])
    assert "do not fit the SSD VGG16 backbone" in str(err.value)
    assert "0.weight: checkpoint [4, 3, 3, 3] vs model [64, 3, 3, 3]" in str(err.value)
    assert not (tmp_path / "out.pth").exists()


def test_convert_script_cli_reports_a_missing_source(tmp_path):
    result = run_convert(tmp_path / "vgg16-397923af.pth", tmp_path / "out.pth")
    assert result.returncode == 2
    assert result.stderr.startswith("error: VGG16 file not found")


@pytest.mark.slow
def test_convert_script_on_a_full_size_torchvision_vgg16(tmp_path, vgg_model):
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.vgg16(weights=None).state_dict()  # random, 138M parameters
    src, dst = tmp_path / "vgg16-397923af.pth", tmp_path / "weights" / "vgg16_reducedfc.pth"
    torch.save(state, src)
    result = run_convert(src, dst)
    src.unlink()  # 553 MB
    assert result.returncode == 0, result.stderr
    assert f"Wrote {dst}" in result.stdout and "20,483,904 parameters" in result.stdout
    assert [p.name for p in dst.parent.iterdir()] == ["vgg16_reducedfc.pth"]  # no temp left

    model = build_model(load_config(REPO_ROOT / "configs" / "voc300.yaml"))
    load_vgg_backbone(model, dst)  # what the trainer does with model.pretrained
    assert torch.equal(model.vgg[0].weight, state["features.0.weight"])
    assert torch.equal(model.vgg[28].bias, state["features.28.bias"])
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(model.vgg[31].weight, fc6[::4, :, ::3, ::3])
    assert torch.equal(model.vgg[33].weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])


# ------------------------------------------------------------- checkpoint configs, installs
def test_checkpoint_with_a_config_key_this_version_does_not_know_loads(tmp_path, caplog):
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml")
    stored = cfg.to_dict()
    del stored["version"]  # a checkpoint from before configs had a version
    stored["model"]["dropout"] = 0.5  # a key this version does not know
    path = tmp_path / "old.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": stored}, path)
    with caplog.at_level("WARNING", logger="ssd.config"):
        model, loaded = build_model_from_weights(path)
    assert loaded.model.backbone == "ssd7" and "dropout" not in loaded.model
    assert "model.dropout" in caplog.text and "old.pth" in caplog.text


def test_checkpoint_config_means_the_same_data_from_any_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    config_file = project / "configs" / "mine.yaml"
    config_file.write_text(f"_base_: {REPO_ROOT / 'configs' / 'shapes.yaml'}\n"
                           "data:\n  root: ../data/shapes\n")
    monkeypatch.chdir(project)
    cfg = load_config(config_file)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, loaded = build_model_from_weights(path)
    assert loaded.data.root == str(project / "data" / "shapes")


_INSTALLED_CHECK = """
import sys
from pathlib import Path
import numpy as np, torch
import ssd
from ssd.config import load_config, packaged_config
from ssd.predictor import Predictor
from ssd.weights import build_model_from_weights
assert "site-packages" in ssd.__file__, ssd.__file__
model, cfg = build_model_from_weights(sys.argv[1])  # a classic state dict: no config inside
assert cfg.model.backbone == "vgg16" and cfg.model.num_classes == 21
assert load_config(packaged_config("voc512.yaml")).model.image_size == 512  # _base_ voc300.yaml
predictor = Predictor(model, cfg, device="cpu", precision="fp32", score_threshold=0.0)
detections = predictor.predict(np.full((60, 80, 3), 127, np.uint8))
assert isinstance(detections, list) and all(0 <= d["box"][0] <= 80 for d in detections)
print("predicted", len(detections))
"""


def test_a_non_editable_install_builds_a_model_without_the_checkout(installed_project, tmp_path,
                                                                    classic_file):
    """pip install (not editable) of a copy of the project, then build and predict from a folder
    outside it: the package must not read the repository checkout."""
    outside = tmp_path / "outside"
    outside.mkdir()
    run = subprocess.run([str(installed_project.python), "-c", _INSTALLED_CHECK, str(classic_file)],
                         cwd=outside, capture_output=True, text=True, env=installed_project.env())
    assert run.returncode == 0, run.stderr
    assert "predicted" in run.stdout


def test_trained_class_names_come_from_the_config_or_the_classic_layout():
    from ssd.data.voc import VOC_CLASSES
    from ssd.weights import trained_class_names

    seed_widths = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"
    shapes = load_config(seed_widths)
    assert trained_class_names({}, shapes.to_dict(), "x.pth") == list(shapes.data.class_names)
    voc = load_config(seed_widths, overrides=["model.num_classes=21", "data.format=voc",
                                              "data.class_names=null"])
    assert trained_class_names({}, voc.to_dict(), "x.pth") == list(VOC_CLASSES)  # data set's own
    classic = build_model(voc).state_dict()
    assert trained_class_names(classic, None, "x.pth") == list(VOC_CLASSES)  # 21 classes: VOC's
    five = build_model(load_config(seed_widths, overrides=["model.num_classes=6", "data.class_names=null"]))
    assert trained_class_names(five.state_dict(), None, "x.pth") == [f"class_{i}" for i in range(5)]
    assert trained_class_names({"0.weight": torch.zeros(1)}, None, "x.pth") is None  # not a detector
