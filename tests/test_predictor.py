"""Predictor and scripts/predict.py: detections in original pixels, every kind of image, clear
errors, the fast path against fp32, drawing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import DEVICES, load_script
from torch import nn

from ssd.config import load_config
from ssd.data import SHAPES_CLASSES, BaseTransform, VOCDataset, make_shapes
from ssd.data.voc import VOC_CLASSES
from ssd.drawing import class_colour, draw_detections, label_size
from ssd.engine.trainer import train_step
from ssd.images import load_image
from ssd.loss import MultiBoxLoss
from ssd.modeling import build_model
from ssd.precision import default_precision
from ssd.predictor import Predictor, class_names_for
from ssd.weights import WeightsError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"  # SSD7 at 160 px
PREDICT_SCRIPT = REPO_ROOT / "scripts" / "predict.py"
TRAIN_STEPS = 40  # Adam steps on the 4 training images: confident, well-placed detections


# ------------------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny generated shapes set (4 train + 8 test images of 160 px) and its config."""
    root = tmp_path_factory.mktemp("predictor_shapes")
    make_shapes(root, num_train=4, num_test=8, image_size=160, seed=0)
    cfg = load_config(SHAPES_CONFIG, overrides=[f"data.root={root}", "data.num_workers=0"])
    return root, cfg


def _dataset(root, split):
    return VOCDataset(root, [("shapes", split)], class_names=list(SHAPES_CLASSES), verbose=False,
                      keep_difficult=True)


@pytest.fixture(scope="module")
def trained(shapes):
    """Checkpoint of the shapes SSD7 trained briefly (full batch, no augmentation) on the four
    training images, so that its scores mean something."""
    root, cfg = shapes
    dataset = _dataset(root, "trainval")
    transform = BaseTransform(cfg.model.image_size, cfg.data.mean)
    samples = [dataset[i] for i in range(len(dataset))]
    # (S, S, 3) -> (3, S, S) per image, stacked to [4, 3, S, S]
    images = torch.stack([torch.from_numpy(transform(image)[0]).permute(2, 0, 1)
                          for image, _ in samples])
    targets = [torch.from_numpy(target) for _, target in samples]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    criterion = MultiBoxLoss(cfg.model.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(TRAIN_STEPS):
        train_step(model, criterion, optimizer, scaler, images, targets, precision="fp32",
                   channels_last=False)
    path = root / "trained.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor(trained, device="cpu", precision="fp32", score_threshold=0.5)


def _image_and_truth(root, split, index):
    """(uint8 BGR image, [(class name, 0-based pixel box)]) of one image, difficult included."""
    dataset = _dataset(root, split)
    image = cv2.imread(str(dataset.records[index].image_path))
    ann = dataset.get_annotation(index)
    truth = [(SHAPES_CLASSES[label], box - 1.0) for box, label in zip(ann["boxes"], ann["labels"])]
    return image, truth


def _iou(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return inter / union


def _assert_found(detections, truth, scale_x, scale_y, min_iou=0.5):
    """Every ground-truth object (scaled) has a detection of its class with IoU > min_iou."""
    for name, box in truth:
        expected = box * [scale_x, scale_y, scale_x, scale_y]
        best = max([_iou(d["box"], expected) for d in detections if d["class_name"] == name],
                   default=0.0)
        assert best > min_iou, f"{name} at {expected.round(1)} not found: {detections}"


def _boxes(detections):
    return np.array([d["box"] for d in detections]).reshape(-1, 4)


# ------------------------------------------------------------------ finding the objects
def test_finds_the_objects_of_a_stretched_image_in_its_own_pixels(shapes, predictor):
    root, _ = shapes
    image, truth = _image_and_truth(root, "trainval", 0)
    assert image.shape[:2] == (160, 160) and len(truth) >= 2
    stretched = cv2.resize(image, (400, 240))  # 2.5x wider, 1.5x taller
    found = predictor.predict(stretched)
    _assert_found(found, truth, 400 / 160, 240 / 160)
    boxes = _boxes(found)
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 400).all() and (boxes[:, [1, 3]] <= 240).all()
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    assert all(d["score"] > 0.5 and d["class_name"] == SHAPES_CLASSES[d["label"]] for d in found)


def test_very_large_image(shapes, predictor):
    root, _ = shapes
    image, truth = _image_and_truth(root, "trainval", 1)
    huge = cv2.resize(image, (4800, 3000))  # 14 megapixels, area-averaged down first
    _assert_found(predictor.predict(huge), truth, 4800 / 160, 3000 / 160)


def test_batch_equals_single_images(shapes, predictor):
    root, _ = shapes
    paths = [str(r.image_path) for r in _dataset(root, "trainval").records[:3]]
    inputs = [paths[0], cv2.resize(cv2.imread(paths[1]), (230, 170)), paths[2]]
    batched = predictor.predict_batch(inputs)
    assert len(batched) == 3
    for one, found in zip(inputs, batched):
        single = predictor.predict(one)
        assert [d["label"] for d in single] == [d["label"] for d in found]
        np.testing.assert_allclose(_boxes(single), _boxes(found), atol=1e-3)


# ------------------------------------------------------------------------ image kinds
def test_grey_rgba_16_bit_and_float_images_match_their_8_bit_bgr_version(shapes, predictor, tmp_path):
    root, _ = shapes
    image, _ = _image_and_truth(root, "trainval", 2)
    reference = predictor.predict(image)
    assert reference
    bgra = np.dstack([image, np.full(image.shape[:2], 77, np.uint8)])
    sixteen = image.astype(np.uint16) * 257  # 255 -> 65535
    variants = {"bgra": bgra, "16-bit": sixteen, "float": image.astype(np.float32) / 255.0}
    for name, variant in variants.items():
        assert predictor.predict(variant) == reference, name
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    cv2.imwrite(str(tmp_path / "sixteen.png"), sixteen)
    assert predictor.predict(tmp_path / "rgba.png") == reference
    assert predictor.predict(str(tmp_path / "sixteen.png")) == reference

    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    grey_reference = predictor.predict(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    assert predictor.predict(grey) == grey_reference
    assert predictor.predict(grey[:, :, None]) == grey_reference
    assert predictor.predict(tmp_path / "grey.png") == grey_reference


def test_load_image_conversions():
    grey16 = np.array([[0, 257, 65535]], np.uint16)
    np.testing.assert_array_equal(load_image(grey16)[0, :, 0], [0, 1, 255])
    assert load_image(grey16).shape == (1, 3, 3)
    np.testing.assert_array_equal(load_image(np.array([[0.0, 0.5, 1.0]]))[0, :, 1], [0, 128, 255])
    np.testing.assert_array_equal(load_image(np.array([[0.0, 100.4, 300.0]]))[0, :, 2], [0, 100, 255])
    np.testing.assert_array_equal(load_image(np.array([[True, False]]))[0, :, 0], [255, 0])
    bgra = np.array([[[1, 2, 3, 4]]], np.uint8)
    np.testing.assert_array_equal(load_image(bgra), [[[1, 2, 3]]])
    bgr = np.zeros((2, 2, 3), np.uint8)
    assert load_image(bgr) is bgr  # no copy for what the network takes anyway


def test_exif_orientation_is_applied(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # white band on the left
    exif = image_module.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image_module.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (40, 20, 3)  # as viewers show it: the band is now on top
    assert loaded[:8].mean() > 200 and loaded[12:].mean() < 50


# ------------------------------------------------------------------ exact pixel mapping
class FixedOutput(nn.Module):
    """A 'detector' with two priors and fixed outputs; records how it was called.

    Prior 0 (cx .25, cy .5, w .2, h .4) says class 2 (label 1) with logit 10; prior 1 (cx .95,
    cy .1, w .3, h .4), which crosses the top-right corner, says class 1 (label 0) with logit 8.
    """

    def __init__(self, num_classes=7):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("priors", torch.tensor([[0.25, 0.5, 0.2, 0.4], [0.95, 0.1, 0.3, 0.4]]),
                             persistent=False)
        self.num_classes = num_classes
        self.calls = []

    def forward(self, images):
        self.calls.append({
            "shape": tuple(images.shape), "dtype": images.dtype,
            "channels_last": images.is_contiguous(memory_format=torch.channels_last)
            and not images.is_contiguous(),
            "inference_mode": torch.is_inference_mode_enabled(),
            "autocast": torch.is_autocast_enabled("cpu"),
            "autocast_dtype": torch.get_autocast_dtype("cpu"),
        })
        batch = images.shape[0]
        conf = torch.zeros(batch, 2, self.num_classes)
        conf[:, 0, 2] = 10.0
        conf[:, 1, 1] = 8.0
        return torch.zeros(batch, 2, 4) * self.scale, conf


@pytest.fixture(scope="module")
def shapes_cfg():
    return load_config(SHAPES_CONFIG)


def test_boxes_are_the_priors_scaled_to_the_original_pixels(shapes_cfg):
    model = FixedOutput()
    predictor = Predictor(model, config=shapes_cfg, device="cpu", precision="fp32")
    scores = [np.exp(10) / (np.exp(10) + 6), np.exp(8) / (np.exp(8) + 6)]
    for height, width in [(360, 640), (123, 77), (3000, 4500)]:
        found = predictor.predict(np.zeros((height, width, 3), np.uint8))
        assert [d["label"] for d in found] == [1, 0]
        assert [d["class_name"] for d in found] == ["square", "circle"]
        np.testing.assert_allclose([d["score"] for d in found], scores, rtol=1e-5)
        # prior 0: xyxy (0.15, 0.3, 0.35, 0.7); prior 1: (0.8, -0.1, 1.1, 0.3), clipped
        expected = [[0.15 * width, 0.3 * height, 0.35 * width, 0.7 * height],
                    [0.8 * width, 0.0, width, 0.3 * height]]
        np.testing.assert_allclose(_boxes(found), expected, rtol=1e-5)
    assert {call["shape"] for call in model.calls} == {(1, 3, 160, 160)}
    assert all(call["inference_mode"] and not call["autocast"] for call in model.calls)


def test_fast_path_uses_channels_last_bf16_autocast_and_inference_mode(shapes_cfg):
    model = FixedOutput()
    predictor = Predictor(model, config=shapes_cfg, device="cpu", precision="bf16", batch_size=2)
    found = predictor.predict_batch([np.zeros((50, 80, 3), np.uint8)] * 3)
    assert [len(f) for f in found] == [2, 2, 2]
    assert [call["shape"][0] for call in model.calls] == [2, 1]
    for call in model.calls:
        assert call["channels_last"] and call["inference_mode"]
        assert call["autocast"] and call["autocast_dtype"] == torch.bfloat16
    assert Predictor(FixedOutput(), config=shapes_cfg, device="cpu").precision == \
        default_precision("cpu")


# How far bf16 may move a detection, derived from the arithmetic (not from one machine's output:
# CPUs with native bf16 and those that emulate it round differently).
# - bf16 keeps 8 significant bits: each rounding has a relative error of up to 2^-8.
# - Under autocast a conv rounds its input, its weights and its output to bf16: 3 roundings.
# - The deepest path of SSD7 has 8 such layers (7 conv blocks and a head conv); to first order
#   relative errors add up, so the head outputs are within 8 * 3 * 2^-8 = 9.4 % of their scale.
# - A decoded box moves with its regression outputs in proportion to its size (centre offset
#   0.1 * t * prior side, side * exp(0.2 * t)), so a corner may move by that fraction of the
#   box's side: about 3 px for the 34 px hexagons, where one machine measured 1.1 px and another
#   0.3 px. Each corner within r = 9.4 % of the side keeps IoU >= (1 - 2r)^2 = 0.66.
# - A softmax score p moves by at most 2 p (1 - p) * delta when no logit moves by more than
#   delta (dp_c = p_c (dz_c - sum_j p_j dz_j)); delta is the 9.4 % of the largest |logit|.
# - On CUDA the fast path is fp16, which keeps 11 significant bits (rounding 2^-11), so the same
#   derivation gives 1.2 %; the fp32 reference runs on the CPU.
UNIT_ROUNDING = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
FAST_PRECISION = {"cpu": "bf16", "cuda": "fp16"}
ROUNDINGS_PER_LAYER = 3  # input, weights, output
SSD7_DEPTH = 8  # conv layers on the deepest path: 7 blocks + the head


def fast_path_relative_error(precision: str) -> float:
    """The relative error bound of the head outputs in `precision` (0.094 for bf16)."""
    return SSD7_DEPTH * ROUNDINGS_PER_LAYER * UNIT_ROUNDING[precision]


def _largest_logit(predictor, paths) -> float:
    """max |class logit| of the fp32 model over the images (the scale bf16 errors scale with)."""
    from ssd.images import network_input

    inputs = np.stack([network_input(load_image(p), predictor.transform) for p in paths])
    with torch.inference_mode():
        _, conf = predictor.model(torch.from_numpy(inputs).permute(0, 3, 1, 2))  # [B,S,S,3] -> [B,3,S,S]
    return float(conf.abs().max())


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_agrees_with_fp32_on_shapes_images(shapes, trained, device):
    """Every confident fp32 detection (score >= 0.5, on the CPU) has a twin of its class from
    the device's fast path (bf16 on the CPU, fp16 on CUDA) whose corners and score are within
    the bounds that precision's arithmetic allows (derivation above)."""
    root, _ = shapes
    images = [str(r.image_path) for split in ("test", "trainval")
              for r in _dataset(root, split).records]
    reference = Predictor(trained, device="cpu", precision="fp32", score_threshold=0.3)
    precision = FAST_PRECISION[device]
    fast = Predictor(trained, device=device, precision=precision, score_threshold=0.05)
    conv = next(m for m in fast.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    relative_error = fast_path_relative_error(precision)
    logit_error = relative_error * _largest_logit(reference, images)
    compared = 0
    for path, expected, got in zip(images, reference.predict_batch(images),
                                   fast.predict_batch(images)):
        for det in (d for d in expected if d["score"] >= 0.5):
            box = np.array(det["box"])
            side = np.repeat(box[2:] - box[:2], 2)[[0, 2, 1, 3]]  # (w, h) -> per coordinate x1 y1 x2 y2
            twins = [g for g in got if g["label"] == det["label"]
                     and (np.abs(np.array(g["box"]) - box) <= relative_error * side).all()]
            assert twins, f"{path}: fp32 detection {det} has no {precision} twin in {got}"
            score_bound = 2 * det["score"] * (1 - det["score"]) * logit_error
            assert min(abs(g["score"] - det["score"]) for g in twins) <= score_bound, \
                (path, det, twins, score_bound)
            compared += 1
    assert compared >= 10  # the comparison is not vacuous


# ------------------------------------------------------------------------ class names
def test_class_names_come_from_the_config():
    assert class_names_for(load_config(SHAPES_CONFIG)) == list(SHAPES_CLASSES)
    assert class_names_for(load_config(REPO_ROOT / "configs" / "voc300.yaml")) == list(VOC_CLASSES)
    coco = class_names_for(load_config(REPO_ROOT / "configs" / "coco300.yaml"))
    assert len(coco) == 80 and coco[0] == "class_0" and coco[79] == "class_79"
    named = load_config(REPO_ROOT / "configs" / "coco300.yaml",
                        overrides=["model.num_classes=3", "data.class_names=[cat, dog]"])
    assert class_names_for(named) == ["cat", "dog"]


# ------------------------------------------------------------------------------ errors
def test_image_errors_are_clear(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="Image file not found: .*nope.jpg"):
        predictor.predict(tmp_path / "nope.jpg")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        predictor.predict(tmp_path)
    (tmp_path / "notes.jpg").write_text("this is text, not a JPEG")
    with pytest.raises(ValueError, match="Cannot read .*notes.jpg as an image"):
        predictor.predict(tmp_path / "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png as an image"):
        predictor.predict(tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"shape \[4, 4, 2\]"):
        predictor.predict(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"shape \[1, 4, 4, 3\]"):
        predictor.predict(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype int32"):
        predictor.predict(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(TypeError, match="path or a numpy array"):
        predictor.predict(42)


def test_missing_weights_say_how_to_get_some(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        Predictor(tmp_path / "ssd300.pth", device="cpu")
    message = str(info.value)
    assert str(tmp_path / "ssd300.pth") in message
    assert "python scripts/train.py --config configs/shapes.yaml" in message
    assert "weights/README.md" in message


def test_weights_and_settings_errors_are_clear(trained, shapes_cfg, tmp_path):
    state_dict = torch.load(trained, weights_only=True)["model"]
    torch.save(state_dict, tmp_path / "bare.pth")  # no config inside
    four_classes = load_config(SHAPES_CONFIG, overrides=["model.num_classes=5",
                                                         "data.class_names=[a, b, c, d]"])
    with pytest.raises(WeightsError, match="trained for 7 classes, the config builds 5"):
        Predictor(tmp_path / "bare.pth", config=four_classes, device="cpu")
    assert Predictor(tmp_path / "bare.pth", config=str(SHAPES_CONFIG), device="cpu").class_names \
        == list(SHAPES_CLASSES)
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(WeightsError, match="not a PyTorch weights file"):
        Predictor(tmp_path / "text.pth", config=shapes_cfg, device="cpu")
    with pytest.raises(ValueError, match="Config file not found"):
        Predictor(trained, config=tmp_path / "missing.yaml", device="cpu")
    with pytest.raises(ValueError, match="needs the config"):
        Predictor(FixedOutput(), device="cpu")
    bad_settings = [({"precision": "fp8"}, "precision must be one of"),
                    ({"precision": "fp16"}, "fp16 needs a CUDA device"),
                    ({"score_threshold": 1.5}, "score_threshold"),
                    ({"nms_threshold": 0.0}, "nms_threshold"),
                    ({"top_k": 0}, "top_k"),
                    ({"batch_size": 0}, "batch_size")]
    for kwargs, message in bad_settings:
        with pytest.raises(ValueError, match=message):
            Predictor(FixedOutput(), config=shapes_cfg, device="cpu", **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor(FixedOutput(), config=shapes_cfg, device="cuda")


# ----------------------------------------------------------------------------- drawing
def test_draw_boxes_and_labels_in_class_colours_inside_the_image():
    image = np.full((160, 200), 128, np.uint8)  # grey input, drawn in colour
    detections = [
        {"box": [20.0, 30.0, 120.0, 90.0], "score": 0.91, "label": 1, "class_name": "square"},
        {"box": [150.0, 0.0, 200.0, 40.0], "score": 0.6, "label": 4, "class_name": "hexagon"},
    ]
    drawn = draw_detections(image, detections)
    assert drawn.shape == (160, 200, 3) and drawn.dtype == np.uint8
    assert (image == 128).all()  # the input is not modified
    square, hexagon = np.array(class_colour(1)), np.array(class_colour(4))
    np.testing.assert_array_equal(drawn[60, 20], square)  # left edge of the first box
    np.testing.assert_array_equal(drawn[90, 70], square)  # its bottom edge
    # Its label sits above the box (there is room): a filled band of its colour.
    label_w, label_h = label_size("square 0.91", 0.35)
    band = drawn[30 - label_h + 1:30, 21:20 + label_w]
    assert (band == square).all(axis=2).mean() > 0.5
    # The second box touches the top and right edges: its label is inside, within the image.
    width, height = label_size("hexagon 0.60", 0.35)
    corner = drawn[:height, 200 - width:]
    assert (corner == hexagon).all(axis=2).mean() > 0.5
    assert len({class_colour(label) for label in range(21)}) == 21


def test_predictor_draw_uses_its_detections(shapes, predictor):
    root, _ = shapes
    image, _ = _image_and_truth(root, "trainval", 0)
    found = predictor.predict(image)
    drawn = predictor.draw(image, found)
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
    np.testing.assert_array_equal(predictor.draw(image, []), image)


# ---------------------------------------------------------------------- predict.py
def test_predict_script_files_folders_globs_and_json(shapes, trained, tmp_path, capsys):
    root, _ = shapes
    images = root / "VOCshapes" / "JPEGImages"
    other = tmp_path / "other"
    other.mkdir()
    first, _ = _image_and_truth(root, "trainval", 0)
    cv2.imwrite(str(other / "000000.png"), cv2.resize(first, (320, 200)))  # same stem, other size
    (other / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    code = load_script("predict").main([str(images / "000001.jpg"), str(images), str(other),
                                str(images / "00000[23].jpg"), "--weights", str(trained),
                                "--out", str(out), "--json", "--score-threshold", "0.4",
                                "--top-k", "3", "--batch-size", "5", "--precision", "fp32"])
    captured = capsys.readouterr()
    assert code == 1  # the broken file was reported and skipped
    assert "broken.jpg" in captured.err and "(skipped)" in captured.err
    assert "class" in captured.out and "score" in captured.out
    document = json.loads((out / "detections.json").read_text())
    entries = document["images"]
    assert len(entries) == 4 + 8 + 1  # 000001 once although named twice; 12 in the folder; png
    assert document["settings"]["score_threshold"] == 0.4 and document["settings"]["top_k"] == 3
    resized = entries[str(other / "000000.png")]
    assert (resized["width"], resized["height"]) == (320, 200)
    assert Path(resized["drawn"]).name == "000000_2_det.jpg"  # stems never collide
    for path, entry in entries.items():
        assert len(entry["detections"]) <= 3 and Path(entry["drawn"]).is_file()
        if Path(path).parent == images and int(Path(path).stem) < 4:  # a training image
            assert entry["detections"], path
        assert cv2.imread(entry["drawn"]).shape[:2] == (entry["height"], entry["width"])
        assert all(d["score"] > 0.4 for d in entry["detections"])
    original = entries[str(images / "000000.jpg")]["detections"]
    _, truth = _image_and_truth(root, "trainval", 0)
    top = original[0]
    scaled = [det for det in resized["detections"] if det["label"] == top["label"]]
    assert max(_iou(d["box"], np.array(top["box"]) * [2, 1.25, 2, 1.25]) for d in scaled) > 0.8
    assert not list(out.glob(".*"))  # no temporary files left
    assert list(document["failed"]) == [str(other / "broken.jpg")]


def test_predict_script_skips_missing_inputs_among_others(shapes, trained, tmp_path, capsys):
    """A missing file, an empty folder and a pattern without matches are reported and skipped
    like an unreadable file; the other images are processed; exit status 1 at the end."""
    root, _ = shapes
    images = root / "VOCshapes" / "JPEGImages"
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    missing, empty, pattern = tmp_path / "missing.jpg", tmp_path / "empty", str(tmp_path / "*.png")
    code = load_script("predict").main([str(missing), str(images / "000000.jpg"), str(empty),
                                        pattern, str(tmp_path / "broken.jpg"),
                                        str(images / "000001.jpg"), "--weights", str(trained),
                                        "--out", str(out), "--json", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 1
    document = json.loads((out / "detections.json").read_text())
    assert set(document["images"]) == {str(images / "000000.jpg"), str(images / "000001.jpg")}
    failed = document["failed"]
    assert failed[str(missing)] == f"Image file not found: {missing}"
    assert failed[str(empty)].startswith("No image files (") and str(empty) in failed[str(empty)]
    assert failed[pattern] == f"No files match {pattern}"
    assert "Cannot read" in failed[str(tmp_path / "broken.jpg")]
    for reason in failed.values():
        assert f"error: {reason} (skipped)" in err
    assert {p.name for p in out.glob("*_det.jpg")} == {"000000_det.jpg", "000001_det.jpg"}


def test_predict_script_outputs_have_ordinary_permissions(shapes, trained, tmp_path):
    root, _ = shapes
    previous = os.umask(0o022)
    try:
        code = load_script("predict").main([str(root / "VOCshapes" / "JPEGImages" / "000000.jpg"),
                                            "--weights", str(trained), "--out", str(tmp_path),
                                            "--json", "--precision", "fp32"])
    finally:
        os.umask(previous)
    assert code == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["000000_det.jpg", "detections.json"]
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_predict_script_missing_weights_exit_status_and_message(shapes, tmp_path):
    root, _ = shapes
    image = root / "VOCshapes" / "JPEGImages" / "000000.jpg"
    result = subprocess.run([sys.executable, str(PREDICT_SCRIPT), str(image), "--weights",
                             str(tmp_path / "none.pth"), "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "error: Weights file not found" in result.stderr
    assert "python scripts/train.py --config configs/shapes.yaml" in result.stderr


def test_predict_script_input_errors(trained, tmp_path):
    script = load_script("predict")
    with pytest.raises(FileNotFoundError, match="Image file not found: .*missing.jpg"):
        script.main([str(tmp_path / "missing.jpg"), "--weights", str(trained)])
    with pytest.raises(FileNotFoundError, match="No files match"):
        script.main([str(tmp_path / "*.jpg"), "--weights", str(trained)])
    with pytest.raises(FileNotFoundError, match="No image files"):
        script.main([str(tmp_path), "--weights", str(trained)])
