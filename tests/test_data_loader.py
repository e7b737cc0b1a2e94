"""Collate, the infinite/distributed sampler, reproducible loaders, and the build_* layer."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from conftest import CONFIGS
from torch.utils.data import DistributedSampler

from ssd.config import ConfigError, load_config
from ssd.data import (
    SHAPES_CLASSES,
    BaseTransform,
    DataError,
    InfiniteSampler,
    SSDAugmentation,
    VOCDataset,
    build_dataset,
    build_transform,
    detection_collate,
    make_test_loader,
    make_train_loader,
)


@pytest.fixture(autouse=True)
def info_logs(caplog):
    """Data set summaries and generation messages are logged at INFO by the ssd.data loggers."""
    caplog.set_level(logging.INFO, logger="ssd")



class TinyDataset:
    """In-memory images (image k is filled with value k) with 1-3 boxes; counts loads."""

    def __init__(self, size: int = 10):
        rng = np.random.default_rng(0)
        self.samples = []
        for k in range(size):
            n = int(rng.integers(1, 4))
            corner = rng.uniform(0, 0.5, size=(n, 2))
            boxes = np.concatenate([corner, corner + rng.uniform(0.1, 0.5, (n, 2))], 1)
            self.samples.append((np.full((24, 32, 3), k, np.uint8), boxes.astype(np.float32),
                                 rng.integers(0, 5, size=n)))
        self.loads = 0

    def __len__(self):
        return len(self.samples)

    def load_sample(self, index):
        self.loads += 1
        return self.samples[index]


def test_detection_collate():
    batch = [(torch.full((3, 4, 4), float(i)), torch.ones(i, 5) * i, 7 - i) for i in range(3)]
    images, targets, indices = detection_collate(batch)
    assert images.shape == (3, 3, 4, 4)
    assert torch.equal(images[:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert [tuple(t.shape) for t in targets] == [(0, 5), (1, 5), (2, 5)]
    assert torch.equal(targets[2], torch.full((2, 5), 2.0))
    assert indices.dtype == torch.long and indices.tolist() == [7, 6, 5]


@pytest.mark.parametrize("size, world_size", [(10, 3), (10, 1), (4, 4), (3, 5)])
def test_sampler_matches_distributed_sampler_epoch_by_epoch(size, world_size):
    for rank in range(world_size):
        stream = itertools.islice(iter(InfiniteSampler(size, True, 4, 0, rank, world_size)),
                                  3 * -(-size // world_size))
        expected = []
        reference = DistributedSampler(range(size), num_replicas=world_size, rank=rank,
                                       shuffle=True, seed=4)
        for epoch in range(3):
            reference.set_epoch(epoch)
            expected += list(reference)
        assert list(stream) == expected


def test_sampler_without_shuffle_and_shards_cover_each_epoch():
    assert list(itertools.islice(InfiniteSampler(4, shuffle=False), 10)) == [0, 1, 2, 3, 0, 1, 2,
                                                                            3, 0, 1]
    positions = []
    for rank in range(3):
        pairs = itertools.islice(InfiniteSampler(7, seed=1, rank=rank, world_size=3)
                                 .with_positions(), 6)
        positions += [p for p, _ in pairs]
    assert sorted(positions) == list(range(18))  # 2 padded epochs of 9, no position twice


def test_sampler_resume_skips_exactly():
    full = list(itertools.islice(InfiniteSampler(7, seed=2, rank=1, world_size=2)
                                 .with_positions(), 30))
    for start in (0, 3, 4, 11):
        resumed = InfiniteSampler(7, seed=2, start=start, rank=1, world_size=2).with_positions()
        assert list(itertools.islice(resumed, 30 - start)) == full[start:]


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (images_a, targets_a, indices_a), (images_b, targets_b, indices_b) in zip(first, second):
        assert torch.equal(indices_a, indices_b) and torch.equal(images_a, images_b)
        assert all(torch.equal(a, b) for a, b in zip(targets_a, targets_b))


def test_train_loader_runs_forever_and_reproduces():
    data = TinyDataset(10)
    aug = SSDAugmentation(size=16)
    batches = take(make_train_loader(data, aug, batch_size=4, seed=3), 8)  # 3.2 epochs
    images, targets, indices = batches[0]
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert len(targets) == 4 and all(t.shape[1] == 5 for t in targets)
    seen = torch.cat([b[2] for b in batches]).tolist()
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert_same_batches(batches, take(make_train_loader(data, aug, 4, seed=3), 8))
    other = take(make_train_loader(data, aug, 4, seed=4), 1)[0]
    assert not torch.equal(other[0], images)


def test_train_loader_is_independent_of_workers():
    data = TinyDataset(10)
    aug = SSDAugmentation(size=16)
    serial = take(make_train_loader(data, aug, 3, num_workers=0, seed=5), 5)
    parallel = take(make_train_loader(data, aug, 3, num_workers=2, seed=5), 5)
    assert_same_batches(serial, parallel)


@pytest.mark.parametrize("workers", [0, 2])
def test_float16_batches_are_the_float32_batches_rounded(workers):
    """data.batch_dtype float16: the augmentation's float32 images rounded to nearest float16,
    stacked in the workers' shared memory or in this process; the boxes stay float32."""
    data = TinyDataset(10)
    aug = SSDAugmentation(size=16)
    reference = take(make_train_loader(data, aug, 3, num_workers=0, seed=5), 4)
    half = take(make_train_loader(data, aug, 3, num_workers=workers, seed=5,
                                  image_dtype=torch.float16), 4)
    for (images, targets, indices), (images16, targets16, indices16) in zip(reference, half):
        assert images16.dtype == torch.float16 and torch.equal(images16, images.half())
        assert all(t16.dtype == torch.float32 and torch.equal(t, t16)
                   for t, t16 in zip(targets, targets16))
        assert torch.equal(indices, indices16)


def test_train_loader_resume_gives_the_same_batches_without_loading_skipped_images():
    data = TinyDataset(10)
    aug = SSDAugmentation(size=16)
    full = take(make_train_loader(data, aug, 4, seed=6), 9)
    data.loads = 0
    resumed = take(make_train_loader(data, aug, 4, seed=6, start_iter=6), 3)
    assert data.loads == 12  # only the 3 batches read
    assert_same_batches(resumed, full[6:])


def test_train_loader_shards_by_rank():
    data = TinyDataset(10)
    aug = SSDAugmentation(size=16)
    shards = [take(make_train_loader(data, aug, 5, seed=1, rank=r, world_size=2), 1)[0][2]
              for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))


def test_test_loader_one_ordered_pass():
    data = TinyDataset(7)
    batches = list(make_test_loader(data, BaseTransform(16, (0, 0, 0)), batch_size=3))
    assert [b[2].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert torch.equal(batches[1][0][2], torch.full((3, 16, 16), 5.0))  # image 5, mean 0
    np.testing.assert_allclose(batches[2][1][0][:, :4].numpy(), data.samples[6][1])


# --- build_* ----------------------------------------------------------------------------------


def shapes_config(tmp_path, *extra):
    return load_config(CONFIGS / "shapes.yaml", overrides=[
        f"data.root={tmp_path}", "data.shapes.num_train=6", "data.shapes.num_test=3",
        "data.shapes.image_size=64", *extra])


def test_build_shapes_generates_once(tmp_path, caplog):
    cfg = shapes_config(tmp_path)
    train = build_dataset(cfg, train=True)
    out = caplog.text
    caplog.clear()
    assert "generating 6 train + 3 test images of 64 px" in out
    assert isinstance(train, VOCDataset) and len(train) <= 6
    assert train.class_names == ["circle", "square", "triangle", "star", "hexagon", "cross"]
    test = build_dataset(cfg, train=False)
    assert len(test) == 3 and test.image_ids[0] == "VOCshapes/000006"
    assert "generating" not in caplog.text  # reused
    other_seed = shapes_config(tmp_path, "data.shapes.seed=1")
    build_dataset(other_seed, train=True)
    assert "settings changed" in caplog.text


def test_evaluation_never_generates_the_shapes_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative data.root from the command line: the working directory
    cfg = shapes_config("data")
    with pytest.raises(DataError) as err:
        build_dataset(cfg, train=False)
    message = str(err.value)
    assert str(tmp_path / "data" / "VOCshapes") in message and "does not exist" in message
    assert f"python scripts/make_shapes.py --root {tmp_path / 'data'} --num-train 6 --num-test 3" in message
    assert "scripts/train.py" in message
    assert not (tmp_path / "data" / "VOCshapes").exists()
    build_dataset(cfg, train=True)  # training generates it, after which evaluation reads it
    assert len(build_dataset(cfg, train=False)) == 3
    with pytest.raises(DataError, match="was made with other settings"):
        build_dataset(shapes_config("data", "data.shapes.num_test=4"), train=False)


def test_an_empty_training_set_names_the_split_and_folder(tmp_path):
    split = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    split.mkdir(parents=True)
    (split / "trainval.txt").write_text("")
    cfg = load_config(CONFIGS / "voc300.yaml", overrides=[f"data.root={tmp_path}/VOCdevkit",
                                                        "data.train_sets=[[2007, trainval]]"])
    with pytest.raises(DataError) as err:
        build_dataset(cfg, train=True)
    message = str(err.value)
    assert "training set is empty" in message and "VOC2007/trainval: 0 images" in message
    assert str(tmp_path / "VOCdevkit") in message and "data.train_sets" in message


def test_build_checks_the_class_count(tmp_path):
    cfg = shapes_config(tmp_path, "data.class_names=null", "model.num_classes=21")
    with pytest.raises(ConfigError, match=r"model.num_classes' is 21 .* expected 7"):
        build_dataset(cfg, train=True)


def test_build_voc_without_data_says_where_and_how(tmp_path):
    cfg = load_config(CONFIGS / "voc300.yaml", overrides=[f"data.root={tmp_path}/VOCdevkit"])
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(cfg, train=False)
    assert "VOCdevkit/VOC2007/ImageSets/Main/test.txt" in str(info.value)
    assert "VOCtrainval_06-Nov-2007.tar" in str(info.value)


def test_build_transform():
    cfg = load_config(CONFIGS / "shapes.yaml", overrides=["data.augment=true"])
    train, test = build_transform(cfg, train=True), build_transform(cfg, train=False)
    assert isinstance(train, SSDAugmentation) and train.size == cfg.model.image_size
    stages = cfg.data.augmentation
    assert (train.photometric, train.max_expand, train.crop, train.mirror) == (
        stages.photometric, stages.max_expand, stages.crop, stages.mirror)
    paper = build_transform(load_config(CONFIGS / "voc300.yaml"), train=True)
    assert (paper.photometric, paper.max_expand, paper.crop, paper.mirror) == (True, 4.0, True, True)
    with pytest.raises(ConfigError, match="data.augmentation.max_expand' is 0.5"):
        build_transform(load_config(CONFIGS / "voc300.yaml", overrides=["data.augmentation.max_expand=0.5"]),
                        train=True)
    assert isinstance(test, BaseTransform) and test.mean == (104, 117, 123)
    no_aug = load_config(CONFIGS / "shapes.yaml", overrides=["data.augment=false"])
    assert isinstance(build_transform(no_aug, train=True), BaseTransform)
    assert isinstance(build_transform(no_aug, train=False), BaseTransform)


def _ensure(root):
    from ssd.data import ensure_shapes

    return ensure_shapes(root, 5, 2, 48, 0)


def test_concurrent_processes_generate_shapes_once(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(3) as pool:
        generated = pool.map(_ensure, [tmp_path] * 3)
    assert sorted(generated) == [False, False, True]
    assert len((tmp_path / "VOCshapes/ImageSets/Main/trainval.txt").read_text().split()) == 5


class BrokenDataset(TinyDataset):
    def load_sample(self, index):
        from ssd.data import DataError

        raise DataError(f"Cannot decode image /x/{index}.jpg", "unreadable image", "/x")


def test_a_bad_file_in_a_worker_surfaces_as_data_error():
    loader = make_test_loader(BrokenDataset(3), BaseTransform(16), batch_size=2, num_workers=1)
    with pytest.raises(DataError, match=r"Cannot decode image /x/0\.jpg"):
        next(iter(loader))


def test_a_corrupt_image_read_by_a_worker_is_one_clear_message(tmp_path):
    """The main process gets the worker's DataError itself: its message, not torch's wrapper."""
    from ssd.data import make_shapes

    make_shapes(tmp_path, 4, 0, 64, seed=0)
    corrupt = tmp_path / "VOCshapes" / "JPEGImages" / "000002.jpg"
    corrupt.write_bytes(b"not a jpeg")
    dataset = VOCDataset(tmp_path, [("shapes", "trainval")], class_names=list(SHAPES_CLASSES),
                         keep_difficult=True, verbose=False)
    loader = make_train_loader(dataset, BaseTransform(64), batch_size=4, num_workers=1)
    with pytest.raises(DataError) as err:
        next(iter(loader))
    message = str(err.value)
    assert message == (f"Cannot decode image {corrupt} (empty, corrupt or not an image file); fix or "
                       "remove it, or set data.skip_bad=true to skip bad files")
    assert err.value.path == str(corrupt) and err.value.reason == "unreadable image"


@pytest.mark.parametrize("cores, processes, expected", [(1, 1, 0), (2, 1, 1), (4, 1, 3), (16, 1, 8),
                                                        (16, 2, 7), (16, 8, 1), (2, 2, 0)])
def test_auto_num_workers_keeps_a_core_per_process_and_caps_at_8(monkeypatch, cores, processes, expected):
    from ssd.data.loader import auto_num_workers, resolve_num_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert auto_num_workers(processes) == expected
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert resolve_num_workers("auto") == resolve_num_workers(None) == expected
    assert resolve_num_workers(5) == 5


def test_num_workers_config_takes_auto_null_or_a_count():
    assert load_config().data.num_workers == "auto"
    assert load_config(overrides=["data.num_workers=null"]).data.num_workers is None
    assert load_config(overrides=["data.num_workers=3"]).data.num_workers == 3
    with pytest.raises(ConfigError, match=r"data.num_workers.*expects int or null or 'auto', got str 'many'"):
        load_config(overrides=["data.num_workers=many"])


def test_workers_send_one_packed_batch_that_unpacks_to_the_targets():
    from ssd.data.loader import PackedBatch, pack_batch

    items = [(torch.full((3, 4, 4), float(i)), torch.ones(i, 5) * i, 7 - i) for i in range(3)]
    packed = pack_batch(items)
    assert isinstance(packed, PackedBatch) and packed.boxes.shape == (3, 5)
    assert packed.counts.tolist() == [0, 1, 2]
    images, targets, indices = packed.unpack()
    assert [tuple(t.shape) for t in targets] == [(0, 5), (1, 5), (2, 5)]
    assert torch.equal(targets[2], torch.full((2, 5), 2.0)) and indices.tolist() == [7, 6, 5]


@pytest.mark.parametrize("in_worker", [False, True])
def test_a_worker_stacks_the_images_in_shared_memory(in_worker, monkeypatch):
    """In a loader worker the batch is stacked in shared memory, so sending it does not copy
    it once more; in the main process it stays in ordinary memory."""
    from ssd.data import loader

    monkeypatch.setattr(loader, "get_worker_info", lambda: object() if in_worker else None)
    items = [(torch.full((3, 4, 4), float(i)), torch.ones(1, 5), i) for i in range(3)]
    images = loader.pack_batch(items, image_dtype=torch.float16).images
    assert images.is_shared() == in_worker
    assert images.dtype == torch.float16 and images.shape == (3, 3, 4, 4)
    assert torch.equal(images[2], torch.full((3, 4, 4), 2.0, dtype=torch.float16))
