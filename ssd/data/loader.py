"""Batches for iteration-based training and for evaluation.

Training reads an endless, reproducible stream: `InfiniteSampler` shuffles each epoch with
``seed + epoch`` exactly as `torch.utils.data.DistributedSampler` does (so under DDP each rank
reads its own shard), and every sample is augmented with the generator
``np.random.default_rng([seed, position])``, where `position` is the sample's place in the
global stream. A batch therefore depends only on (seed, iteration): not on the number of
workers, and a run resumed at iteration k (``start_iter=k``) reads exactly the batches an
uninterrupted run would have read from iteration k, without loading the skipped images.

A DataError raised while reading a sample (in a worker process or not) reaches the caller as
that same DataError, with its own message, instead of torch's wrapped worker traceback.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ssd.data.common import DataError, to_tensors
from ssd.system import usable_cores


@dataclass(frozen=True)
class LoadFailure:
    """A DataError caught while reading a sample, carried to the main process as a batch."""

    message: str
    reason: str
    path: str

    @classmethod
    def of(cls, error: DataError) -> LoadFailure:
        return cls(str(error), error.reason, error.path)

    def error(self) -> DataError:
        return DataError(self.message, self.reason, self.path)


class PackedBatch(NamedTuple):
    """A batch as few tensors as possible, for the trip from a loader worker to the main process
    (each tensor costs the main process a shared-memory handle to receive, map and pin).

    Attributes:
        images: [B, 3, S, S] float32 (or the loader's `image_dtype`).
        boxes: [N, 5] the B targets one after another (N = sum of counts).
        counts: [B] long, the number of boxes of each image.
        indices: [B] long, data set indices.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    counts: torch.Tensor
    indices: torch.Tensor

    def unpack(self) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(images [B, 3, S, S], targets: B views [n_i, 5] of `boxes`, indices [B])."""
        return self.images, list(self.boxes.split(self.counts.tolist())), self.indices


def pack_batch(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int] | LoadFailure],
               image_dtype: torch.dtype | None = None):
    """Collate (image [3, S, S], target [n_i, 5], index) items into a PackedBatch; a batch
    holding a LoadFailure collates to that LoadFailure. `image_dtype` (default: the images'
    own) is the dtype of the stacked images (rounded to nearest, as ``Tensor.to`` rounds).

    In a loader worker the images are stacked straight into shared memory (as torch's
    default_collate does; ``Tensor.share_memory_`` of the empty batch), so sending the batch
    does not copy them once more.
    """
    failure = next((item for item in batch if isinstance(item, LoadFailure)), None)
    if failure is not None:
        return failure
    first = batch[0][0]
    dtype = image_dtype or first.dtype
    images = torch.empty((len(batch), *first.shape), dtype=dtype)  # [B, 3, S, S]
    if get_worker_info() is not None:
        images.share_memory_()
    for slot, item in zip(images, batch):
        slot.copy_(item[0])
    boxes = torch.cat([item[1] for item in batch])  # [sum n_i, 5]
    counts = torch.tensor([len(item[1]) for item in batch], dtype=torch.long)
    indices = torch.tensor([item[2] for item in batch], dtype=torch.long)
    return PackedBatch(images, boxes, counts, indices)


def detection_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int] | LoadFailure]):
    """Stack a list of (image [3, S, S], target [n_i, 5], index) items.

    Returns:
        images [B, 3, S, S]; targets: list of B tensors [n_i, 5] (xmin, ymin, xmax, ymax,
        label); indices LongTensor [B] (data set indices, e.g. for `get_annotation`).
        A batch holding a LoadFailure collates to that LoadFailure.
    """
    packed = pack_batch(batch)
    return packed.unpack() if isinstance(packed, PackedBatch) else packed


class InfiniteSampler(Sampler[int]):
    """Endless stream of data set indices for iteration-based training.

    Epoch e is ``torch.randperm(size)`` of a generator seeded with ``seed + e`` (or 0..size-1
    without shuffling), padded by repetition to a multiple of `world_size`; rank r reads
    positions r, r + world_size, ... of it: the same indices as DistributedSampler with
    ``set_epoch(e)`` (drop_last=False), one epoch after another, never stopping.

    Args:
        size: data set length.
        shuffle: reshuffle every epoch.
        seed: base seed of the shuffles.
        start: samples this rank has already consumed (a resumed run skips them without
            loading anything).
        rank, world_size: the shard to read (DDP).
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, start: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        if size < 1:
            raise ValueError(f"InfiniteSampler needs a non-empty data set, got size {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.size, self.shuffle, self.seed = int(size), bool(shuffle), int(seed)
        self.start, self.rank, self.world_size = int(start), int(rank), int(world_size)
        self.per_rank = math.ceil(self.size / self.world_size)  # samples per rank per epoch
        self.total = self.per_rank * self.world_size  # padded epoch length

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices of epoch `epoch` (length `per_rank`)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        padding = self.total - self.size
        order += (order * math.ceil(padding / self.size))[:padding] if padding else []
        return order[self.rank:self.total:self.world_size]

    def with_positions(self) -> Iterator[tuple[int, int]]:
        """Endless (global position, index) pairs from `start` on.

        The global position of this rank's j-th sample of epoch e is
        ``e * total + j * world_size + rank``: unique across ranks and the same in a resumed run.
        """
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            indices = self.epoch_indices(epoch)
            base = epoch * self.total + self.rank
            for j in range(offset, self.per_rank):
                yield base + j * self.world_size, indices[j]
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        return (index for _, index in self.with_positions())


class _PositionSampler(Sampler[tuple[int, int]]):
    """Adapter: `InfiniteSampler.with_positions()` as the keys of a DataLoader."""

    def __init__(self, sampler: InfiniteSampler):
        super().__init__()
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self.sampler.with_positions()


def raw_sample(dataset, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [H, W, 3] BGR, boxes float32 [n, 4] normalised, labels int64 [n]) of
    `dataset[index]`, bypassing any transform the data set holds.

    Uses ``dataset.load_sample(index)`` when there is one, else splits the [n, 5] target of an
    untransformed ``dataset[index]``.
    """
    if hasattr(dataset, "load_sample"):
        return dataset.load_sample(index)
    image, target = dataset[index]
    target = np.asarray(target, dtype=np.float32).reshape(-1, 5)
    return image, target[:, :4], target[:, 4].astype(np.int64)


class TransformedDataset(Dataset):
    """Wraps a data set for a DataLoader: raw sample -> transform -> tensors, plus the index.

    A key is a data set index, or a (global position, index) pair from the training sampler;
    the transform's generator is ``np.random.default_rng([seed, position])`` (position = index
    for plain keys).

    Returns (image Tensor[3, S, S] float32, target Tensor[n, 5] float32, index int).
    """

    def __init__(self, dataset, transform: Callable, seed: int = 0):
        if transform is None:
            raise ValueError("a loader needs a transform that makes every image the same size "
                             "(SSDAugmentation or BaseTransform)")
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        """The sample of `key`, or a LoadFailure when reading it raised a DataError."""
        position, index = key if isinstance(key, tuple) else (key, key)
        try:
            image, boxes, labels = raw_sample(self.dataset, index)
        except DataError as error:
            return LoadFailure.of(error)
        rng = np.random.default_rng([self.seed, position])
        image, boxes, labels = self.transform(image, boxes, labels, rng=rng)
        image, target = to_tensors(image, boxes, labels)
        return image, target, int(index)


# Batches each worker prepares ahead (torch's default is 2): enough to ride out a slow image.
PREFETCH_BATCHES_PER_WORKER = 4
# The `auto` worker count never goes above this. On the 16-core host of an H100, 8 workers with
# the full SSD300 augmentation gave 1882 images/s (2071 from data.cache_images), twice what
# SSD300's fp16 step takes there; 15 gave 3177 (3910) while holding twice the batches in shared
# memory: set data.num_workers higher for faster steps or heavier augmentation.
MAX_AUTO_WORKERS = 8


def auto_num_workers(local_processes: int | None = None) -> int:
    """The `data.num_workers: auto` rule: min(8, cores per training process - 1), at least 0.

    Each training process keeps one core for itself (its step launches work and receives the
    batches); the others prepare batches. The cores are those this process may run on
    (os.sched_getaffinity), shared by the `local_processes` training processes of this machine
    (default: torchrun's LOCAL_WORLD_SIZE, else 1). With a single core the main process loads.
    """
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(MAX_AUTO_WORKERS, usable_cores() // max(1, local_processes) - 1))


def resolve_num_workers(value: int | str | None) -> int:
    """`data.num_workers` as a number: an int as it is, "auto" or None by `auto_num_workers`."""
    if value is None or value == "auto":
        return auto_num_workers()
    return int(value)


# Niceness the loader workers take when the training step runs on the CPU (`low_priority`):
# the step's threads then need every core, and a thread preempted by a worker stalls the others
# at the next synchronisation point, so the workers run in the time the step leaves free (and
# whenever the step waits for them). Measured on a 2-core CPU, demo config, 2 workers decoding
# every image: the training loop at 0.81 and 0.83 of the bare step's images/s with normal
# priority, 0.87 and 0.85 with this (two runs each); with data.cache_images the difference is
# within the spread between runs.
LOW_PRIORITY_NICENESS = 19


def init_loader_worker(worker_id: int, low_priority: bool = False) -> None:
    """Loader workers: no OpenCV thread pools (torch already runs a worker on one thread; the
    workers together use the cores, threads inside them would only compete); with
    `low_priority`, the lowest scheduling priority (where the system has one)."""
    cv2.setNumThreads(0)
    if low_priority and hasattr(os, "nice"):
        os.nice(LOW_PRIORITY_NICENESS)


class DetectionLoader(DataLoader):
    """A DataLoader that yields (images, targets, indices) from its workers' PackedBatches and
    raises the DataError of a sample that could not be read (carried out of the worker as a
    LoadFailure) with its own message."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, LoadFailure):
                raise batch.error()
            yield batch.unpack()


def data_loader(dataset: Dataset, batch_size: int, num_workers: int | str | None, pin_memory: bool,
                seed: int = 0, sampler: Sampler | None = None, collate_fn: Callable = pack_batch,
                loader_class: type[DataLoader] = DetectionLoader,
                low_priority_workers: bool = False) -> DataLoader:
    """The project's DataLoader settings in one place: OpenCV single-threaded in workers,
    persistent workers with `PREFETCH_BATCHES_PER_WORKER` batches queued each, pinned memory only
    with CUDA, a seeded generator for the workers' base seed; batches as `collate_fn` makes them
    (default: PackedBatches, unpacked by `DetectionLoader` into (images, targets, indices)).
    `low_priority_workers`: the workers lower their priority (for a step that runs on the CPU,
    see LOW_PRIORITY_NICENESS)."""
    generator = torch.Generator()  # workers' base seed: keeps the global torch RNG untouched
    generator.manual_seed(seed)
    num_workers = resolve_num_workers(num_workers)
    parallel = num_workers > 0
    return loader_class(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
        num_workers=num_workers, collate_fn=collate_fn,
        pin_memory=pin_memory and torch.cuda.is_available(),
        worker_init_fn=(functools.partial(init_loader_worker, low_priority=low_priority_workers)
                        if parallel else None),
        generator=generator, drop_last=False,
        persistent_workers=parallel,  # a loader iterated again keeps its workers
        prefetch_factor=PREFETCH_BATCHES_PER_WORKER if parallel else None,
    )


def make_train_loader(
    dataset,
    transform: Callable,
    batch_size: int,
    num_workers: int | str | None = 0,
    pin_memory: bool = False,
    seed: int = 0,
    start_iter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    low_priority_workers: bool = False,
    image_dtype: torch.dtype = torch.float32,
) -> DataLoader:
    """Endless training batches (never StopIteration; no epochs, no len()).

    Args:
        dataset: a data set with ``load_sample(i)`` (VOCDataset, COCODataset) or returning
            untransformed (image, target [n, 5]).
        transform: e.g. SSDAugmentation; called with ``rng=`` per sample.
        batch_size: images per batch on this process (the global batch / world_size).
        num_workers: loader processes; "auto" or None: `auto_num_workers()`.
        pin_memory: page-locked batches, for asynchronous copies (only when CUDA is available).
        seed: shuffling and augmentation seed.
        start_iter: batches this process has already consumed (resume).
        rank, world_size: the DDP shard.
        low_priority_workers: the workers take the lowest scheduling priority (for a training
            step that runs on the CPU).
        image_dtype: the dtype of the batches' images (the augmentation's float32 rounded to
            it); float16 halves what workers send and the device receives.

    Yields:
        (images [B, 3, S, S] of `image_dtype`, targets list of B [n_i, 5] float32, indices
        LongTensor[B]). The same seed gives the same batches for any num_workers.
    """
    if len(dataset) == 0:
        report = getattr(dataset, "report", None)
        what = report.summary() if report is not None else type(dataset).__name__
        raise DataError(f"The training set is empty ({what}); check data.root and the training "
                        "split", "empty data set")
    sampler = InfiniteSampler(len(dataset), shuffle=True, seed=seed,
                              start=start_iter * batch_size, rank=rank, world_size=world_size)
    return data_loader(TransformedDataset(dataset, transform, seed), batch_size, num_workers,
                       pin_memory, seed, sampler=_PositionSampler(sampler),
                       collate_fn=functools.partial(pack_batch, image_dtype=image_dtype),
                       low_priority_workers=low_priority_workers)


def make_test_loader(dataset, transform: Callable, batch_size: int, num_workers: int | str | None = 0,
                     pin_memory: bool = False) -> DataLoader:
    """One ordered pass over `dataset`.

    Yields:
        (images [B, 3, S, S] float32, targets list of B [n_i, 5] float32, indices LongTensor[B]);
        indices run 0, 1, ..., len(dataset) - 1 over the batches.
    """
    return data_loader(TransformedDataset(dataset, transform), batch_size, num_workers, pin_memory)
