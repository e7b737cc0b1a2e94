"""Decoded training images held in memory (`data.cache_images`).

Decoding a JPEG is most of what a loader worker does per sample; on a machine with few cores
that work competes with the training step itself. A data set whose decoded images fit in
memory can decode each of them once, before the loader workers start: the workers are forked
from the process that holds the images and read them from memory without copying them (on
systems that start workers by spawning instead of forking, each worker receives its own copy).

The cache holds the images exactly as decoding returns them, so a cached data set yields the
same samples, bit for bit, as one that decodes every time; or, for a transform that only
resizes and mirrors (`cached_image_size`), resized to its output size, which gives that
transform the same outputs from a fraction of the memory.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from ssd.errors import ConfigError
from ssd.progress import progress_bar
from ssd.system import usable_cores

T = TypeVar("T")
BYTES_PER_PIXEL = 3  # uint8 BGR
# The cache may take at most this share of the memory available when it is built; the rest is
# left to the loader workers' batches, the model and the system.
MAX_MEMORY_FRACTION = 0.5


class CacheTooLargeError(ConfigError):
    """The decoded images would not fit in the memory the cache may take (a config error: the
    message says to set data.cache_images=false)."""


def check_cache_fits(needed_bytes: int, available_bytes: int | None) -> None:
    """Raise CacheTooLargeError when `needed_bytes` exceeds MAX_MEMORY_FRACTION of the
    available memory (unknown available memory: no check)."""
    if available_bytes is None or needed_bytes <= MAX_MEMORY_FRACTION * available_bytes:
        return
    raise CacheTooLargeError(
        f"data.cache_images needs {needed_bytes / 2**30:.2f} GiB for the decoded training images "
        f"but may take at most {MAX_MEMORY_FRACTION:.0%} of the "
        f"{available_bytes / 2**30:.2f} GiB of memory available; set data.cache_images=false "
        f"(the loader workers then decode every image as it is read)")


def decode_all(read: Callable[[int], T], count: int, threads: int | None = None,
               progress: bool = True) -> list[T]:
    """[read(0), ..., read(count - 1)], decoded by `threads` threads (default: the cores this
    process may use; OpenCV releases the interpreter lock while it decodes).

    An exception raised by `read` propagates (the remaining reads are cancelled).
    """
    with ThreadPoolExecutor(max_workers=max(1, threads or usable_cores())) as pool:
        decoded = pool.map(read, range(count))
        try:
            return list(progress_bar(decoded, total=count, desc="cache images", unit="img",
                                     enabled=progress))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def cached_image_size(transform) -> int | None:
    """The side the cache may resize the images to for `transform` without changing its
    outputs: its output size when it only resizes and mirrors (`resizes_only`, as the demo's
    augmentation and the test transform), else None (the images are held as decoded)."""
    return transform.size if getattr(transform, "resizes_only", False) else None


def images_bytes(sizes: Sequence[tuple[int, int]]) -> int:
    """Bytes the decoded uint8 BGR images of these (width, height) sizes take."""
    return sum(width * height * BYTES_PER_PIXEL for width, height in sizes)
