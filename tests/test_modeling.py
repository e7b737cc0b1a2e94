import pytest
import torch
from conftest import CONFIGS
from torch import nn

from ssd.config import ConfigError, load_config
from ssd.loss import build_loss
from ssd.modeling import BACKBONES, SSD, build_model
from ssd.modeling.ssd import prior_options

# The classic published SSD300 (21 classes) checkpoint layout: key -> shape.
_VGG_CONVS = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
              (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
_VGG_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
_EXTRAS = [(256, 1024, 1), (512, 256, 3), (128, 512, 1), (256, 128, 3),
           (128, 256, 1), (256, 128, 3), (128, 256, 1), (256, 128, 3)]
_SOURCES = [(512, 4), (1024, 6), (512, 6), (256, 6), (256, 4), (256, 4)]


def classic_ssd300_shapes():
    shapes = {}
    for index, (out_ch, in_ch) in zip(_VGG_INDICES, _VGG_CONVS):
        shapes[f"vgg.{index}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"vgg.{index}.bias"] = (out_ch,)
    shapes["vgg.31.weight"], shapes["vgg.31.bias"] = (1024, 512, 3, 3), (1024,)
    shapes["vgg.33.weight"], shapes["vgg.33.bias"] = (1024, 1024, 1, 1), (1024,)
    shapes["L2Norm.weight"] = (512,)
    for index, (out_ch, in_ch, k) in enumerate(_EXTRAS):
        shapes[f"extras.{index}.weight"] = (out_ch, in_ch, k, k)
        shapes[f"extras.{index}.bias"] = (out_ch,)
    for index, (channels, anchors) in enumerate(_SOURCES):
        shapes[f"loc.{index}.weight"] = (anchors * 4, channels, 3, 3)
        shapes[f"loc.{index}.bias"] = (anchors * 4,)
        shapes[f"conf.{index}.weight"] = (anchors * 21, channels, 3, 3)
        shapes[f"conf.{index}.bias"] = (anchors * 21,)
    return shapes


@pytest.fixture(scope="module")
def ssd300():
    return build_model(load_config(CONFIGS / "voc300.yaml")).eval()


def test_voc300_state_dict_matches_classic_layout(ssd300):
    state = ssd300.state_dict()
    expected = classic_ssd300_shapes()
    assert len(state) == 71
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(p.numel() for p in ssd300.parameters()) == 26_285_486
    assert "priors" not in state  # non-persistent buffer


def test_voc300_forward_shapes_and_priors(ssd300):
    with torch.no_grad():
        loc, conf = ssd300(torch.zeros(1, 3, 300, 300))
    assert loc.shape == (1, 8732, 4) and conf.shape == (1, 8732, 21)
    assert ssd300.priors.shape == (8732, 4)
    assert ssd300.L2Norm.weight.eq(20).all()


def test_voc512_output_shapes():
    model = build_model(load_config(CONFIGS / "voc512.yaml")).eval()
    with torch.no_grad():
        loc, conf = model(torch.zeros(1, 3, 512, 512))
    assert model.priors.shape == (24564, 4)
    assert loc.shape == (1, 24564, 4) and conf.shape == (1, 24564, 21)


def test_ssd7_output_shapes_and_batch_norm():
    cfg = load_config(CONFIGS / "shapes.yaml")
    model = build_model(cfg)
    images = torch.randn(2, 3, cfg.model.image_size, cfg.model.image_size)
    loc, conf = model(images)
    num_priors = sum(4 * size * size for size in cfg.model.priors.feature_maps)
    assert model.priors.shape == (num_priors, 4)
    assert loc.shape == (2, num_priors, 4) and conf.shape == (2, num_priors, 7)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_ssd7_block_widths_come_from_the_config():
    seed = build_model(load_config(CONFIGS / "shapes.yaml", overrides=["model.channels=null"]))
    convs = [m for m in seed.base if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 48, 64, 64, 48, 48, 32]
    widths = [16, 24, 32, 40, 56, 72, 88]
    cfg = load_config(CONFIGS / "shapes.yaml", overrides=[f"model.channels={widths}"])
    wide = build_model(cfg)
    convs = [m for m in wide.base if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    assert [head.in_channels for head in wide.loc] == widths[3:]  # the last four blocks feed the heads
    size = cfg.model.image_size
    loc, conf = wide(torch.randn(1, 3, size, size))
    assert loc.shape[1] == conf.shape[1] == wide.priors.shape[0]
    with pytest.raises(ValueError, match=r"ssd7 channels=\[8, 8\]: expected 7 positive widths"):
        build_model(load_config(CONFIGS / "shapes.yaml", overrides=["model.channels=[8,8]"]))


def test_loc_conf_ordering_matches_priors():
    """Output row k of the heads belongs to prior k: probe a single conv channel."""
    cfg = load_config(CONFIGS / "shapes.yaml")
    model = build_model(cfg).eval()
    for head in (*model.loc, *model.conf):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    # Anchor 2 of the second source map: conf channel 2*C + 1 -> prior index offset.
    num_classes, size0, size1 = 7, *cfg.model.priors.feature_maps[:2]
    model.conf[1].bias.data[2 * num_classes + 1] = 1.0
    with torch.no_grad():
        _, conf = model(torch.zeros(1, 3, cfg.model.image_size, cfg.model.image_size))
    hot = (conf[0, :, 1] == 1.0).nonzero().squeeze(1)
    start = 4 * size0 * size0
    assert hot.tolist() == [start + cell * 4 + 2 for cell in range(size1 * size1)]


def test_priors_move_with_device_and_are_not_saved():
    model = build_model(load_config(CONFIGS / "shapes.yaml"))
    model.to(torch.float64)
    assert model.priors.dtype == torch.float64
    assert not any(k.startswith("priors") for k in model.state_dict())


def test_feature_map_mismatch_names_layer_and_sizes():
    with pytest.raises(ValueError, match=r"conv4_3.*38x38.*feature_maps\[0\] expects 37x37"):
        build_model(load_config(CONFIGS / "voc300.yaml",
                                overrides=["model.priors.feature_maps=[37, 19, 10, 5, 3, 1]"]))


def test_unknown_backbone_lists_known():
    known = "vgg16, ssd7, mobilenet_v3_large, resnet50"
    with pytest.raises(ConfigError, match=f"model.backbone' must be one of {known}, got 'vgg19'"):
        load_config(overrides=["model.backbone=vgg19"])


class ToySSD(SSD):
    """Two convolutions; both outputs feed the heads (a backbone defined only in this test)."""

    def __init__(self, num_classes, image_size, width, **prior_args):
        super().__init__(num_classes, image_size, **prior_args)
        self.stem = nn.Conv2d(3, width, kernel_size=3, stride=4, padding=1)
        self.down = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        self.source_names = ["stem", "down"]
        self._build_heads([width, width])
        self._check_feature_maps()

    @classmethod
    def from_config(cls, model_cfg):
        width = model_cfg.channels[0] if model_cfg.channels else 8
        return cls(model_cfg.num_classes, model_cfg.image_size, width, **prior_options(model_cfg))

    def extract_features(self, images):
        stem = torch.relu(self.stem(images))  # [B, W, S/4, S/4]
        return [stem, torch.relu(self.down(stem))]  # + [B, W, S/8, S/8]


def test_a_backbone_registered_in_a_test_builds_and_runs(monkeypatch):
    monkeypatch.setitem(BACKBONES, "toy", ToySSD)
    cfg = load_config(overrides=[
        "model.backbone=toy", "model.num_classes=3", "model.image_size=32", "model.channels=[6]",
        "model.priors.feature_maps=[8, 4]", "model.priors.steps=[4, 8]",
        "model.priors.min_sizes=[8, 16]", "model.priors.max_sizes=[16, 24]",
        "model.priors.aspect_ratios=[[2], [2]]"])
    model = build_model(cfg)
    assert isinstance(model, ToySSD) and model.stem.out_channels == 6
    loc, conf = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    priors = (8 * 8 + 4 * 4) * 4  # 4 boxes per cell with aspect ratio 2
    assert loc.shape == (2, priors, 4) and conf.shape == (2, priors, 3)
    assert model.priors.shape == (priors, 4)
    # ... and the loss trains it, with nothing registered anywhere else
    targets = [torch.tensor([[0.1, 0.1, 0.5, 0.6, 0.0]]), torch.tensor([[0.3, 0.2, 0.9, 0.9, 1.0]])]
    parts = build_loss(cfg)(loc, conf, model.priors, targets)
    (parts["loss_loc"] + parts["loss_conf"]).backward()
    assert torch.isfinite(parts["loss_conf"]) and parts["loss_conf"] > 0
    assert model.stem.weight.grad.abs().sum() > 0


def test_source_count_mismatch():
    with pytest.raises(ValueError, match="4 source feature maps.*lists 6"):
        build_model(load_config(CONFIGS / "shapes.yaml", overrides=[
            "model.priors.feature_maps=[20, 10, 5, 2, 1, 1]", "model.priors.steps=[8,16,32,80,160,160]",
            "model.priors.min_sizes=[1,2,3,4,5,6]", "model.priors.max_sizes=[2,3,4,5,6,7]",
            "model.priors.aspect_ratios=[[2],[2],[2],[2],[2],[2]]"]))
