"""The torchvision backbones (mobilenet_v3_large SSDLite, resnet50 SSD300), their ImageNet
weights, and the backbone registry's extension point."""

from __future__ import annotations

import copy
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from conftest import CONFIGS, load_script
from test_export_onnx import needs_onnx, needs_onnxruntime
from torch import nn

from ssd import export as onnx_export
from ssd.config import load_config
from ssd.data.shapes import render_image
from ssd.data.transforms import BaseTransform
from ssd.engine.solver import build_optimizer
from ssd.loss import build_loss
from ssd.modeling import build_model
from ssd.modeling.imagenet import IMAGENET_MEAN_BGR_255, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from ssd.modeling.mobilenet import SSDLiteMobileNetV3
from ssd.modeling.resnet import ResNet50SSD
from ssd.weights import WeightsError, load_pretrained_backbone

MOBILENET_CONFIG = CONFIGS / "ssdlite320_mobilenet_v3.yaml"
FLOAT32_EPSILON = 2.0**-23  # spacing of float32 numbers at 1
RESNET_CONFIG = CONFIGS / "ssd300_resnet50.yaml"
# mobilenet_v3_large at 160 px: maps ceil(160 / 16) = 10, 5, then halved rounding up.
SMALL_MOBILENET = [
    "model.image_size=160", "model.pretrained=null",
    "model.priors.feature_maps=[10, 5, 3, 2, 1, 1]", "model.priors.steps=[16, 32, 53.333, 80, 160, 160]",
    "model.priors.min_sizes=[32, 56, 80, 104, 128, 152]",
    "model.priors.max_sizes=[56, 80, 104, 128, 152, 160]",
]

# resnet50 at 264 px (the smallest sizes keep 5 cells before the two unpadded 3x3 extras):
# maps ceil(264 / 8) = 33, then 17, 9, 5 (stride 2), 3, 1 (unpadded 3x3).
SMALL_RESNET = [
    "model.image_size=264", "model.pretrained=null",
    "model.priors.feature_maps=[33, 17, 9, 5, 3, 1]", "model.priors.steps=[8, 16, 32, 64, 88, 264]",
]


def _num_priors(feature_maps, aspect_ratios) -> int:
    return sum(size * size * (2 + 2 * len(ratios)) for size, ratios in zip(feature_maps, aspect_ratios))


@pytest.mark.parametrize("config, maps, channels, priors", [
    (MOBILENET_CONFIG, [20, 10, 5, 3, 2, 1], [672, 960, 512, 256, 256, 128], 3234),
    (RESNET_CONFIG, [38, 19, 10, 5, 3, 1], [1024, 512, 512, 256, 256, 256], 8732),
    (CONFIGS / "shapes_mobilenet.yaml", [10, 5, 3, 2, 1, 1], [672, 960, 512, 256, 256, 128], 560),
])
def test_config_builds_feature_maps_and_priors(config, maps, channels, priors):
    cfg = load_config(config)
    model = build_model(cfg).eval()
    size = cfg.model.image_size
    with torch.no_grad():
        features = model.extract_features(torch.zeros(1, 3, size, size))
    assert [tuple(f.shape[1:]) for f in features] == [(c, m, m) for c, m in zip(channels, maps)]
    assert list(cfg.model.priors.feature_maps) == maps
    assert model.priors.shape == (priors, 4)
    assert priors == _num_priors(maps, cfg.model.priors.aspect_ratios)
    anchors = model.num_anchors_per_location()
    with torch.no_grad():  # heads: A * 4 and A * C outputs per cell
        assert [tuple(head(f).shape[1:]) for head, f in zip(model.loc, features)] == [
            (a * 4, m, m) for a, m in zip(anchors, maps)]


def test_configs_use_the_imagenet_mean_the_input_scaling_assumes():
    for config in (MOBILENET_CONFIG, RESNET_CONFIG, CONFIGS / "shapes_mobilenet.yaml"):
        assert tuple(load_config(config).data.mean) == IMAGENET_MEAN_BGR_255


def test_input_scaling_gives_torchvision_imagenet_normalisation():
    """The test transform (BGR mean subtracted, RGB out) + the model's first step equal
    torchvision's ToTensor + Normalize(ImageNet mean, std) of the same picture."""
    bgr = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    image, _, _ = BaseTransform(32, mean=IMAGENET_MEAN_BGR_255)(bgr, np.zeros((0, 4)), np.zeros(0))
    model = SSDLiteMobileNetV3.from_config(load_config(overrides=SMALL_MOBILENET).model)
    ours = model.input_norm(torch.from_numpy(image).permute(2, 0, 1)[None])  # [1, 3, 32, 32]
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255  # [3, 32, 32]
    mean, std = torch.tensor(IMAGENET_MEAN_RGB).view(3, 1, 1), torch.tensor(IMAGENET_STD_RGB).view(3, 1, 1)
    torch.testing.assert_close(ours[0], (rgb - mean) / std, atol=1e-5, rtol=1e-5)


def test_small_image_size_and_mismatch_message():
    model = build_model(load_config(overrides=["model.backbone=mobilenet_v3_large", *SMALL_MOBILENET]))
    model.eval()  # 1x1 maps of one image: BatchNorm needs eval mode
    assert [f.shape[-1] for f in model.extract_features(torch.zeros(1, 3, 160, 160))] == [10, 5, 3, 2, 1, 1]
    with pytest.raises(ValueError, match=r"source feature map 0 \(C4 expansion\) is 10x10 .* expects 20x20"):
        build_model(load_config(MOBILENET_CONFIG, overrides=["model.image_size=160"]))


def test_default_heads_keep_their_state_dict_keys():
    """The overridable head builder leaves the 3x3-conv backbones' keys as before."""
    keys = build_model(load_config(CONFIGS / "shapes.yaml")).state_dict()
    assert {"loc.0.weight", "loc.0.bias", "conf.3.weight", "conf.3.bias"} <= set(keys)
    assert not any(key.startswith("loc.0.0") for key in keys)


@pytest.mark.parametrize("model_class, torchvision_model, prefix", [
    (SSDLiteMobileNetV3, torchvision.models.mobilenet_v3_large, "features."),
    (ResNet50SSD, torchvision.models.resnet50, ""),
])
def test_loads_torchvision_layout_state_dict(tmp_path, model_class, torchvision_model, prefix):
    spec = model_class.TORCHVISION_WEIGHTS
    assert torchvision.models.get_weight(spec.weights).url.endswith("/" + spec.file_name)
    torch.manual_seed(1)
    reference = torchvision_model(weights=None).state_dict()
    path = tmp_path / spec.file_name
    torch.save(reference, path)
    overrides = SMALL_MOBILENET if model_class is SSDLiteMobileNetV3 else []
    cfg = load_config(MOBILENET_CONFIG if model_class is SSDLiteMobileNetV3 else RESNET_CONFIG,
                      overrides=overrides)
    torch.manual_seed(2)
    model = build_model(cfg)
    backbone = getattr(model, spec.target).state_dict()
    expected = {key[len(prefix):]: value for key, value in reference.items()
                if key.startswith(prefix) and not key.startswith(spec.unused_prefixes)}
    assert backbone.keys() == expected.keys()
    assert not torch.equal(backbone["conv1.weight" if not prefix else "0.0.weight"],
                           expected["conv1.weight" if not prefix else "0.0.weight"])
    heads_before = model.loc[0].state_dict()

    load_pretrained_backbone(model, str(path))  # what the trainer does with model.pretrained

    for key, value in getattr(model, spec.target).state_dict().items():
        assert torch.equal(value, expected[key]), key
    for key, value in model.loc[0].state_dict().items():
        assert torch.equal(value, heads_before[key]), key


def test_wrong_torchvision_file_names_the_backbone(tmp_path):
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = build_model(load_config(MOBILENET_CONFIG, overrides=SMALL_MOBILENET))
    with pytest.raises(WeightsError, match=r"do not fit the mobilenet_v3_large backbone \(model.mobilenet\)"):
        load_pretrained_backbone(model, str(path))
    with pytest.raises(FileNotFoundError, match="mobilenet_v3_large-8738ca79.pth"):
        load_pretrained_backbone(model, str(tmp_path / "missing.pth"))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """The torch hub folder in tmp_path, and every download failing as without a network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_torchvision_offline_says_which_file_and_where(offline_hub):
    model = build_model(load_config(MOBILENET_CONFIG, overrides=SMALL_MOBILENET))
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained_backbone(model, "torchvision")
    message = str(info.value)
    assert "mobilenet_v3_large-8738ca79.pth" in message
    assert str(offline_hub / "mobilenet_v3_large-8738ca79.pth") in message
    assert "model.pretrained" in message and "no network" in message


def test_pretrained_torchvision_reads_the_hub_file(offline_hub):
    offline_hub.mkdir(parents=True)
    reference = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    torch.save(reference, offline_hub / "mobilenet_v3_large-8738ca79.pth")
    model = build_model(load_config(MOBILENET_CONFIG, overrides=SMALL_MOBILENET))
    load_pretrained_backbone(model, "torchvision")
    assert torch.equal(model.mobilenet.state_dict()["16.0.weight"], reference["features.16.0.weight"])


def test_vgg_refuses_the_torchvision_keyword():
    model = build_model(load_config(CONFIGS / "voc300.yaml", overrides=["model.pretrained=null"]))
    with pytest.raises(WeightsError, match="vgg16 takes a reduced-fc VGG16 file"):
        load_pretrained_backbone(model, "torchvision")


def test_backbone_without_pretrained_weights_says_so():
    model = build_model(load_config(CONFIGS / "shapes.yaml"))
    with pytest.raises(WeightsError, match="SSD7 has no pretrained backbone weights to load; set "
                                           "model.pretrained=null"):
        load_pretrained_backbone(model, "weights/anything.pth")


def _shapes_batch(size: int, count: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`count` synthetic shapes images through the test transform: images [count, 3, size,
    size] and targets [n, 5] (normalised xyxy, 0-based label)."""
    transform = BaseTransform(size, mean=IMAGENET_MEAN_BGR_255)
    images, targets = [], []
    for index in range(count):
        bgr, objects = render_image(np.random.default_rng(index), size)
        boxes = np.array([obj.box for obj in objects], dtype=np.float32).reshape(-1, 4) / size
        labels = np.array([obj.label for obj in objects], dtype=np.float32)
        image, boxes, labels = transform(bgr, boxes, labels)
        images.append(torch.from_numpy(image).permute(2, 0, 1))  # [3, S, S]
        targets.append(torch.cat([torch.from_numpy(boxes), torch.from_numpy(labels)[:, None]], dim=1))
    return torch.stack(images), targets


@pytest.mark.parametrize("config, overrides, steps", [
    (MOBILENET_CONFIG, [*SMALL_MOBILENET, "model.num_classes=7"], 3),
    (RESNET_CONFIG, [*SMALL_RESNET, "model.num_classes=7"], 3),
])
def test_a_few_training_steps_lower_the_loss(config, overrides, steps, one_thread):
    cfg = load_config(config, overrides=overrides)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    criterion = build_loss(cfg)
    optimizer = build_optimizer(model, 1e-4, 0.9, 0.0, name="adamw")
    images, targets = _shapes_batch(cfg.model.image_size, count=2)
    losses = []
    for _ in range(steps):
        loc, conf = model(images)
        parts = criterion(loc, conf, model.priors, targets)
        loss = parts["loss_loc"] + parts["loss_conf"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_benchmark_counts_a_multiply_add_as_two_flops():
    """The backbones benchmark's GFLOPs: a 3x3 conv 3 -> 8 on 16x16 (stride 1, padding 1) is
    16 * 16 * 8 * 3 * 9 multiply-adds."""
    module = load_script("benchmarks/backbones")  # imports only ssd and torch
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert module.count_gflops(conv, 16) * 1e9 == 2 * 16 * 16 * 8 * 3 * 9


# ------------------------------------------------------------------------------ ONNX export
def calibrate_batch_norm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Running statistics of every BatchNorm from one forward pass over `images` (then eval).

    A randomly initialised MobileNetV3 in eval mode (running mean 0, variance 1) shrinks its
    activations to ~1e-14 at the heads, where any two runtimes agree trivially; with the
    statistics of real activations its outputs vary as a trained model's do.
    """
    for layer in model.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: exactly this batch's statistics
    with torch.no_grad():
        model.train()(images)
    return model.eval()


@pytest.mark.parametrize("config, overrides", [
    (MOBILENET_CONFIG, SMALL_MOBILENET),
    (RESNET_CONFIG, SMALL_RESNET),
], ids=["mobilenet_v3_large", "resnet50"])
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path, config, overrides, one_thread):
    """The project's exporter (ssd.export) on the backbone at its smallest image size, two
    classes: onnxruntime's boxes and scores equal PyTorch's at batch 1 and 2.

    Tolerance: both runtimes compute in float32, in other summation orders (onnxruntime also
    folds BatchNorm into the convolutions), so each is off the exact result by its rounding
    error. PyTorch's own error is measured against a float64 run of the same model; the two
    runtimes may differ by the sum of two such errors, allowed twice over for the other kernels.
    """
    needs_onnx()
    needs_onnxruntime()
    cfg = load_config(config, overrides=[*overrides, "model.num_classes=3", "data.class_names=[a, b]"])
    size = cfg.model.image_size
    images = onnx_export.example_batch(onnx_export.synthetic_image(size), size, cfg.data.mean)
    torch.manual_seed(0)
    model = calibrate_batch_norm(build_model(cfg), images)
    wrapper = onnx_export.ExportedSSD(model, cfg.model.variances).eval()
    # TorchScript-based exporter: the dynamo one takes 3x longer on ResNet-50.
    onnx_export.export(wrapper, size, tmp_path / "model.onnx", exporter="torchscript")
    with torch.no_grad():
        boxes, scores = wrapper(images)
        exact = [output.float() for output in copy.deepcopy(wrapper).double()(images.double())]
    assert scores.max() - scores.min() > 0.5  # outputs that vary: the comparison means something
    rounding = {name: onnx_export._scaled_difference(ours, reference)
                for name, ours, reference in zip(onnx_export.OUTPUTS, (boxes, scores), exact)}
    differences = onnx_export.onnxruntime_differences(wrapper, tmp_path / "model.onnx", images)
    for name, error in rounding.items():
        assert differences[name] <= 4 * error + FLOAT32_EPSILON, (name, differences, rounding)
