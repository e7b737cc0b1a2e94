"""SSDAugmentation and BaseTransform: invariants over many random draws, each step exactly."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from ssd.data import AugmentParams, BaseTransform, SSDAugmentation
from ssd.data import transforms as T

MEAN = (104.0, 117.0, 123.0)
MEAN_RGB = np.array(MEAN[::-1], np.float32)


def random_boxes(rng, n):
    corner = rng.uniform(0, 0.95, size=(n, 2))
    size = rng.uniform(0.01, 1, size=(n, 2)) * (1 - corner)
    return np.concatenate([corner, corner + size], axis=1).astype(np.float32)  # [n, 4]


def expected_box(box, params, width, height):
    """Where one normalised input box must land (None if the crop drops it); plain scalars."""
    ratio, left, top = params.expand or (1.0, 0.0, 0.0)
    x0, y0, x1, y1 = params.crop or (0.0, 0.0, width * ratio, height * ratio)
    a = box[0] * width + left
    b = box[1] * height + top
    c = box[2] * width + left
    d = box[3] * height + top
    if params.crop is not None:
        if not (x0 < (a + c) / 2 < x1 and y0 < (b + d) / 2 < y1):
            return None
        a, c = min(max(a, x0), x1), min(max(c, x0), x1)
        b, d = min(max(b, y0), y1), min(max(d, y0), y1)
    a, c = (a - x0) / (x1 - x0), (c - x0) / (x1 - x0)
    b, d = (b - y0) / (y1 - y0), (d - y0) / (y1 - y0)
    if params.flip:
        a, c = 1 - c, 1 - a
    return [a, b, c, d]


def test_10000_draws_keep_boxes_valid_and_in_step():
    aug = SSDAugmentation(size=32, mean=MEAN)
    image = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    flips = expands = crops = 0
    for draw in range(10_000):
        rng = np.random.default_rng(draw)
        n = int(rng.integers(0, 5))
        boxes, labels = random_boxes(rng, n), np.arange(n, dtype=np.int64) + 3
        params = aug.sample_params(30, 40, boxes, rng)
        out, out_boxes, out_labels = aug.apply(image, boxes, labels, params)
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert out_boxes.shape == (len(out_labels), 4) and out_boxes.dtype == np.float32
        assert ((out_boxes >= 0) & (out_boxes <= 1)).all()
        assert (out_boxes[:, 2:] > out_boxes[:, :2]).all()  # positive width and height
        assert n == 0 or len(out_labels) >= 1  # the crop keeps the centre of some object
        assert len(set(out_labels.tolist())) == len(out_labels)
        wanted = {k + 3: expected_box(boxes[k], params, 40, 30) for k in range(n)}
        wanted = {label: box for label, box in wanted.items() if box is not None}
        assert sorted(out_labels.tolist()) == sorted(wanted)
        for box, label in zip(out_boxes, out_labels):
            np.testing.assert_allclose(box, wanted[int(label)], atol=2e-6)
        flips += params.flip
        expands += params.expand is not None
        crops += params.crop is not None
    assert 4700 < flips < 5300 and 4700 < expands < 5300
    assert 6000 < crops < 10_000 * 6 / 7  # a mode that finds no patch is followed by another


def test_call_is_a_pure_function_of_the_generator():
    aug = SSDAugmentation(size=48)
    image = np.random.default_rng(1).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    boxes, labels = random_boxes(np.random.default_rng(2), 3), np.array([1, 2, 3])
    first = aug(image, boxes, labels, rng=np.random.default_rng(7))
    again = aug(image, boxes, labels, rng=np.random.default_rng(7))
    params = aug.sample_params(40, 60, boxes, np.random.default_rng(7))
    split = aug.apply(image, boxes, labels, params)
    for a, b, c in zip(first, again, split):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other = aug(image, boxes, labels, rng=np.random.default_rng(8))
    assert not np.array_equal(first[0], other[0])


def test_labels_stay_with_their_image_content():
    """Each box is painted in a colour that encodes its label; photometric steps are off, so the
    output pixel at the centre of every output box must carry that box's colour."""
    aug = SSDAugmentation(size=64)
    cells = [(0, 0), (16, 0), (32, 0), (0, 16), (16, 16), (32, 16)]
    for draw in range(2000):
        rng = np.random.default_rng([3, draw])
        image = np.full((32, 48, 3), 0, np.uint8)
        chosen = rng.permutation(len(cells))[: rng.integers(1, 5)]
        boxes, labels = [], []
        for label, cell in enumerate(chosen):
            x, y = cells[cell]
            w, h = rng.integers(8, 17, size=2)
            image[y:y + h, x:x + w] = (40 * label + 30, 200 - 40 * label, 255)
            boxes.append([x / 48, y / 32, (x + w) / 48, (y + h) / 32])
            labels.append(label)
        params = aug.sample_params(32, 48, np.array(boxes, np.float32), rng)
        params = dataclasses.replace(params, brightness=0.0, contrast=1.0, saturation=1.0,
                                     hue=0.0, channel_order=(0, 1, 2))
        out, out_boxes, out_labels = aug.apply(image, np.array(boxes, np.float32),
                                               np.array(labels), params)
        pixels = out + MEAN_RGB  # RGB
        for box, label in zip(out_boxes, out_labels):
            if min(box[2] - box[0], box[3] - box[1]) * 64 < 6:
                continue  # too small for an interpolation-free centre pixel
            cx, cy = int((box[0] + box[2]) * 32), int((box[1] + box[3]) * 32)
            np.testing.assert_allclose(pixels[cy, cx], (255, 200 - 40 * label, 40 * label + 30),
                                       atol=2)


def test_mirror_flips_image_and_coordinates_exactly():
    aug = SSDAugmentation(size=24, mean=MEAN)
    image = np.random.default_rng(4).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    boxes = np.array([[0.1, 0.2, 0.4, 0.9], [0.5, 0.0, 1.0, 0.5]], np.float32)
    out, out_boxes, labels = aug.apply(image, boxes, np.array([4, 2]), AugmentParams(flip=True))
    np.testing.assert_array_equal(out, image[:, ::-1, ::-1].astype(np.float32) - MEAN_RGB)
    np.testing.assert_allclose(out_boxes, [[0.6, 0.2, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]], atol=1e-7)
    np.testing.assert_array_equal(labels, [4, 2])


def test_mirror_with_zoom_and_crop_is_the_mirror_image():
    aug = SSDAugmentation(size=40)
    image = np.random.default_rng(5).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    boxes = random_boxes(np.random.default_rng(6), 4)
    for seed in range(20):
        params = aug.sample_params(30, 50, boxes, np.random.default_rng(seed))
        plain = aug.apply(image, boxes, np.arange(4), dataclasses.replace(params, flip=False))
        mirrored = aug.apply(image, boxes, np.arange(4), dataclasses.replace(params, flip=True))
        assert np.abs(mirrored[0] - plain[0][:, ::-1]).max() <= 1  # interpolation rounding
        expected = np.stack([1 - plain[1][:, 2], plain[1][:, 1], 1 - plain[1][:, 0],
                             plain[1][:, 3]], axis=1)
        np.testing.assert_allclose(mirrored[1], expected, atol=1e-6)
        np.testing.assert_array_equal(mirrored[2], plain[2])


def test_identity_params_are_resize_and_mean():
    aug = SSDAugmentation(size=20, mean=MEAN)
    image = np.random.default_rng(7).integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    boxes = np.array([[0.0, 0.5, 1.0, 1.0]], np.float32)
    out, out_boxes, labels = aug.apply(image, boxes, np.array([1]), AugmentParams())
    resized = cv2.resize(image, (20, 20)).astype(np.float32)
    assert np.abs(out - (resized[..., ::-1] - MEAN_RGB)).max() <= 1
    np.testing.assert_array_equal(out_boxes, boxes)


@pytest.mark.parametrize("flip", [False, True])
def test_a_plain_rescale_is_cv2_resize_on_the_warps_sampling_positions(flip):
    """Without zoom-out and crop the image is resized (and mirrored) exactly as cv2.resize and
    cv2.flip do; the general warp samples the same positions, so it differs only by its
    fixed-point rounding, at most 1."""
    aug = SSDAugmentation(size=48, mean=MEAN)
    image = np.random.default_rng(11).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    params = AugmentParams(flip=flip)
    out, _, _ = aug.apply(image, np.zeros((0, 4), np.float32), np.zeros(0), params)
    resized = cv2.resize(image, (48, 48), interpolation=cv2.INTER_LINEAR)
    expected = cv2.flip(resized, 1) if flip else resized
    np.testing.assert_array_equal(out, expected[..., ::-1].astype(np.float32) - MEAN_RGB)
    warped = cv2.warpAffine(image, T.warp_matrix(params, 90, 70, 48), (48, 48),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(warped.astype(int) - expected.astype(int)).max() <= 1


def test_photometric_steps():
    image = np.full((4, 4, 3), (50, 100, 150), np.uint8)  # BGR
    bright = T.photometric(image, AugmentParams(brightness=20.0))
    np.testing.assert_array_equal(bright[0, 0], (70, 120, 170))
    both = T.photometric(image, AugmentParams(brightness=10.0, contrast=1.5))  # (v + 10) * 1.5
    np.testing.assert_array_equal(both[0, 0], (90, 165, 240))
    last = T.photometric(image, AugmentParams(brightness=10.0, contrast=2.0, contrast_last=True))
    np.testing.assert_array_equal(last[0, 0], (120, 220, 255))  # clipped at 255
    red = np.full((2, 2, 3), (0, 0, 255), np.uint8)
    green = T.photometric(red, AugmentParams(hue=120.0))
    assert green[0, 0].argmax() == 1 and green[0, 0, 1] > 240  # hue 0 -> 120 degrees
    grey = T.photometric(image, AugmentParams(saturation=0.0))
    assert np.ptp(grey[0, 0].astype(int)) <= 1  # no saturation left
    np.testing.assert_array_equal(T.photometric(image, AugmentParams()), image)


def test_channel_swap_keeps_the_zoom_out_fill_at_the_mean():
    aug = SSDAugmentation(size=16, mean=MEAN)
    image = np.full((8, 8, 3), (10, 20, 30), np.uint8)
    params = AugmentParams(channel_order=(2, 0, 1), expand=(2.0, 0.0, 0.0))
    out, _, _ = aug.apply(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), params)
    # image in the top-left quarter: BGR swapped to (30, 10, 20), then RGB minus mean
    np.testing.assert_array_equal(out[2, 2], np.array([20, 10, 30], np.float32) - MEAN_RGB)
    np.testing.assert_array_equal(out[12, 12], [0, 0, 0])  # the fill is exactly the mean


def test_zoom_out_places_image_and_boxes():
    aug = SSDAugmentation(size=40, mean=MEAN)
    image = np.full((10, 20, 3), 255, np.uint8)
    params = AugmentParams(expand=(2.0, 10.0, 5.0))  # canvas 40 x 20, image at (10, 5)
    out, boxes, _ = aug.apply(image, np.array([[0, 0, 1, 1]], np.float32), np.array([0]), params)
    np.testing.assert_allclose(boxes, [[10 / 40, 5 / 20, 30 / 40, 15 / 20]], atol=1e-7)
    pixels = out + MEAN_RGB  # output rows are 2x the canvas rows
    np.testing.assert_array_equal(pixels[12:28, 12:28], 255)
    np.testing.assert_array_equal(pixels[:8], np.broadcast_to(MEAN_RGB, (8, 40, 3)))


def test_crop_search_respects_the_min_iou(monkeypatch):
    boxes = np.array([[10, 10, 60, 50], [70, 20, 90, 80]], np.float64)
    monkeypatch.setattr(T, "CROP_MIN_IOUS", (0.7,))
    for seed in range(200):
        patch = T.sample_crop(100, 100, boxes, np.random.default_rng(seed))
        assert patch is not None
        assert T.boxes_iou(np.array([patch]), boxes).max() >= 0.7
    monkeypatch.setattr(T, "CROP_MIN_IOUS", (-np.inf,))
    for seed in range(200):
        x0, y0, x1, y1 = T.sample_crop(100, 100, boxes, np.random.default_rng(seed))
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 100
        assert min(x1 - x0, y1 - y0) >= 30 and 0.5 <= (y1 - y0) / (x1 - x0) <= 2
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert (((centres > (x0, y0)) & (centres < (x1, y1))).all(axis=1)).any()
    monkeypatch.setattr(T, "CROP_MIN_IOUS", (None,))
    assert T.sample_crop(100, 100, boxes, np.random.default_rng(0)) is None


def test_images_without_boxes():
    aug = SSDAugmentation(size=16)
    image = np.zeros((12, 20, 3), np.uint8)
    for seed in range(50):
        out, boxes, labels = aug(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                 rng=np.random.default_rng(seed))
        assert out.shape == (16, 16, 3) and boxes.shape == (0, 4) and labels.shape == (0,)


def test_default_generator_when_none_given():
    aug = SSDAugmentation(size=16)
    image = np.zeros((12, 20, 3), np.uint8)
    out, boxes, _ = aug(image, np.array([[0.1, 0.1, 0.9, 0.9]], np.float32), np.array([0]))
    assert out.shape == (16, 16, 3) and len(boxes) == 1


@pytest.mark.parametrize("size", [300, 17])
def test_base_transform(size):
    image = np.random.default_rng(8).integers(0, 256, size=(37, 50, 3), dtype=np.uint8)
    boxes, labels = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), np.array([5])
    out, out_boxes, out_labels = BaseTransform(size, MEAN)(image, boxes, labels)
    expected = cv2.resize(image, (size, size)).astype(np.float32)[..., ::-1] - MEAN_RGB
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and out_boxes is boxes and out_labels is labels
    assert BaseTransform(size)(image)[1] is None


@pytest.mark.parametrize("stage", ["photometric", "max_expand", "crop", "mirror"])
def test_each_stage_can_be_switched_off(stage):
    """A stage that is off never changes its parameters; the other stages still do."""
    off = {"max_expand": 1.0} if stage == "max_expand" else {stage: False}
    aug = SSDAugmentation(size=40, **off)
    boxes = random_boxes(np.random.default_rng(8), 3)
    draws = [aug.sample_params(30, 50, boxes, np.random.default_rng(seed)) for seed in range(200)]
    untouched = AugmentParams()
    touched = {
        "photometric": lambda p: (p.brightness, p.contrast, p.saturation, p.hue, p.channel_order) !=
        (untouched.brightness, untouched.contrast, untouched.saturation, untouched.hue,
         untouched.channel_order),
        "max_expand": lambda p: p.expand is not None,
        "crop": lambda p: p.crop is not None,
        "mirror": lambda p: p.flip,
    }
    for name, changed in touched.items():
        count = sum(changed(p) for p in draws)
        if name == stage:
            assert count == 0, name
        else:
            assert 40 < count < 200, name  # each remaining stage fires on a good share of draws


def test_mirror_only_augmentation_is_the_base_transform_or_its_mirror():
    aug = SSDAugmentation(size=32, mean=MEAN, max_expand=1.0, photometric=False, crop=False)
    base = BaseTransform(size=32, mean=MEAN)
    image = np.random.default_rng(9).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    boxes = np.array([[0.1, 0.2, 0.4, 0.9]], np.float32)
    plain, _, _ = base(image, boxes, np.array([0]))
    flips = 0
    for seed in range(20):
        out, out_boxes, _ = aug(image, boxes, np.array([0]), rng=np.random.default_rng(seed))
        flipped = not np.allclose(out_boxes, boxes)
        flips += flipped
        expected = plain[:, ::-1] if flipped else plain
        assert np.abs(out - expected).max() <= 1
        if flipped:
            np.testing.assert_allclose(out_boxes, [[0.6, 0.2, 0.9, 0.9]], atol=1e-6)
    assert 3 <= flips <= 17


def test_max_expand_below_one_is_rejected():
    with pytest.raises(ValueError, match="max_expand=0.5"):
        SSDAugmentation(max_expand=0.5)
