"""data.cache_images: decoded training images held in memory change nothing but speed."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest
from test_data_loader import assert_same_batches, take
from test_data_voc import obj, write_year, xml
from trainer_helpers import tiny_cfg

from ssd import system
from ssd.data import BaseTransform, DataError, SSDAugmentation, VOCDataset, image_cache, make_train_loader
from ssd.data.image_cache import CacheTooLargeError, cached_image_size, check_cache_fits
from ssd.data.loader import LOW_PRIORITY_NICENESS, init_loader_worker
from ssd.engine.metrics_log import read_metrics
from ssd.engine.trainer import Trainer
from ssd.system import available_memory_bytes


def noisy_voc(root, count: int = 6, size=(40, 30)):
    """A VOC2007 'trainval' split of `count` noise PNGs (lossless, so decoding is exact), one
    cat each."""
    width, height = size
    write_year(root, "2007", "trainval",
               {str(k): xml(width, height, obj("cat", (2 + k, 3, 20 + k, 25))) for k in range(count)})
    rng = np.random.default_rng(0)
    for k in range(count):
        cv2.imwrite(str(root / f"VOC2007/JPEGImages/{k}.png"),
                    rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_cached_samples_and_batches_equal_the_decoded_ones(tmp_path):
    noisy_voc(tmp_path)
    plain = VOCDataset(tmp_path, [("2007", "trainval")], verbose=False)
    cached = VOCDataset(tmp_path, [("2007", "trainval")], verbose=False)
    held = cached.cache_images(progress=False)
    assert held == 6 * 40 * 30 * 3
    for index in range(len(plain)):
        for a, b in zip(plain.load_sample(index), cached.load_sample(index)):
            np.testing.assert_array_equal(a, b)
    aug = SSDAugmentation(size=24)
    assert_same_batches(take(make_train_loader(plain, aug, 4, num_workers=0, seed=1), 3),
                        take(make_train_loader(cached, aug, 4, num_workers=2, seed=1), 3))


@pytest.mark.parametrize("transform", [
    SSDAugmentation(size=24, photometric=False, max_expand=1.0, crop=False),  # resizes, mirrors
    BaseTransform(size=24),
])
def test_resized_cache_gives_a_resize_only_transform_the_same_batches(tmp_path, transform):
    """A transform that only resizes (and mirrors) gets the same batches, bit for bit, from
    images cached at its output size: a quarter of the memory of these 40x30 images here."""
    noisy_voc(tmp_path, size=(40, 30))
    plain = VOCDataset(tmp_path, [("2007", "trainval")], verbose=False)
    cached = VOCDataset(tmp_path, [("2007", "trainval")], verbose=False)
    size = cached_image_size(transform)
    assert size == 24
    assert cached.cache_images(progress=False, size=size) == 6 * 24 * 24 * 3
    for index in range(len(plain)):
        image, boxes, labels = cached.load_sample(index)
        assert image.shape == (24, 24, 3)
        _, plain_boxes, plain_labels = plain.load_sample(index)
        np.testing.assert_array_equal(boxes, plain_boxes)  # normalised by the decoded size
        np.testing.assert_array_equal(labels, plain_labels)
    assert_same_batches(take(make_train_loader(plain, transform, 4, num_workers=0, seed=1), 4),
                        take(make_train_loader(cached, transform, 4, num_workers=2, seed=1), 4))


def test_transforms_that_crop_zoom_or_change_colours_keep_the_decoded_images():
    assert cached_image_size(SSDAugmentation(size=24)) is None
    for stage in ({"photometric": True}, {"max_expand": 2.0}, {"crop": True}):
        options = {"photometric": False, "max_expand": 1.0, "crop": False} | stage
        assert not SSDAugmentation(size=24, **options).resizes_only, stage


def test_the_cache_is_read_after_the_files_are_gone_and_cannot_be_written(tmp_path):
    noisy_voc(tmp_path, count=2)
    ds = VOCDataset(tmp_path, [("2007", "trainval")], verbose=False)
    ds.cache_images(progress=False)
    expected = cv2.imread(str(tmp_path / "VOC2007/JPEGImages/1.png"))
    for path in (tmp_path / "VOC2007/JPEGImages").iterdir():
        path.unlink()
    image, _, _ = ds.load_sample(1)
    np.testing.assert_array_equal(image, expected)
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0, 0] = 1  # a transform writing into its input would corrupt the data set


def test_a_corrupt_image_fails_when_cached_or_becomes_blank_with_skip_bad(tmp_path, caplog):
    noisy_voc(tmp_path, count=3)
    (tmp_path / "VOC2007/JPEGImages/1.png").write_bytes(b"\x89PNG not really an image")
    strict = VOCDataset(tmp_path, [("2007", "trainval")], verbose=False)
    with pytest.raises(DataError, match=r"Cannot decode image .*1\.png"):
        strict.cache_images(progress=False)
    lenient = VOCDataset(tmp_path, [("2007", "trainval")], skip_bad=True, verbose=False)
    with caplog.at_level(logging.WARNING, logger="ssd"):
        lenient.cache_images(progress=False)
    image, boxes, labels = lenient.load_sample(1)
    assert image.shape == (30, 40, 3) and image.max() == 0 and len(boxes) == len(labels) == 0
    assert any("1.png" in record.getMessage() for record in caplog.records)


def test_the_memory_check_refuses_a_cache_larger_than_its_share(tmp_path, monkeypatch):
    noisy_voc(tmp_path, count=2)
    needed = 2 * 40 * 30 * 3
    check_cache_fits(needed, None)  # unknown memory: no check
    check_cache_fits(needed, int(needed / image_cache.MAX_MEMORY_FRACTION))
    with pytest.raises(CacheTooLargeError, match="data.cache_images"):
        check_cache_fits(needed, int(needed / image_cache.MAX_MEMORY_FRACTION) - 1)
    monkeypatch.setattr(system, "available_memory_bytes", lambda: needed)
    ds = VOCDataset(tmp_path, [("2007", "trainval")], verbose=False)
    with pytest.raises(CacheTooLargeError, match=r"GiB .* data.cache_images=false"):
        ds.cache_images(progress=False)
    assert ds._decoded is None  # nothing was decoded


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    1234567 kB\n")
    assert available_memory_bytes(meminfo) == 1234567 * 1024
    meminfo.write_text("MemTotal:       16000000 kB\n")
    assert available_memory_bytes(meminfo) is None
    assert available_memory_bytes(tmp_path / "missing") is None


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process priorities on this system")
def test_low_priority_workers_take_the_lowest_priority():
    def niceness_in_worker(low_priority: bool) -> int:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child stands in for a loader worker
            init_loader_worker(0, low_priority=low_priority)
            os.write(write, str(os.nice(0)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        return int(os.read(read, 16))

    base = os.nice(0)
    assert niceness_in_worker(False) == base
    assert niceness_in_worker(True) == min(base + LOW_PRIORITY_NICENESS, 19)


def test_a_cached_training_run_has_the_losses_of_an_uncached_one(tmp_path, caplog):
    losses = {}
    for cache in (False, True):
        cfg = tiny_cfg(tmp_path / "shapes", **{"data.cache_images": cache, "solver.max_iter": 3})
        with caplog.at_level(logging.INFO, logger="ssd"):
            trainer = Trainer.from_config(cfg, output_dir=tmp_path / f"run_{cache}", device="cpu",
                                          progress=False)
        assert (trainer.train_set._decoded is not None) == cache
        trainer.train()
        losses[cache] = [(r["loss_loc"], r["loss_conf"])
                         for r in read_metrics(tmp_path / f"run_{cache}" / "metrics.jsonl")
                         if r["kind"] == "train"]
    assert len(losses[True]) == 3 and losses[True] == losses[False]
    assert any("16 training images decoded into memory" in r.getMessage() for r in caplog.records)
