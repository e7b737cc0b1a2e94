"""Progress bars that suit where stderr goes: every progress display goes through here.

On a terminal, `progress_bar` is a tqdm bar. Redirected to a file or a pipe, a tqdm bar would
write one carriage-return frame per refresh; there it is a `PlainProgress` instead, which writes
a plain line at every `PLAIN_STEP` of the total (and one at the end), or nothing when progress
is not wanted. `write_line` prints a message without breaking a bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

from tqdm import tqdm

PLAIN_STEP = 0.1  # without a terminal: one line per 10% of the total


def shows_bar(enabled: bool = True, stream: TextIO | None = None) -> bool:
    """True when a bar is drawn: progress is wanted and `stream` (default stderr) is a
    terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return enabled and callable(isatty) and bool(isatty())


def write_line(text: str, file: TextIO | None = None) -> None:
    """Print `text` as one line (to stdout by default) above any bar on screen."""
    tqdm.write(text, file=file)


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, enabled: bool = True,
                 plain_lines: bool = True) -> tqdm | PlainProgress:
    """A progress display for a loop (the parts of tqdm's interface the project uses: iterate,
    `update`, `set_postfix`, `close`, `with`).

    Args:
        iterable: what the loop runs over (optional, as for tqdm).
        total: the expected count (default len(iterable) when it has one).
        desc, unit, initial: as for tqdm.
        enabled: False shows nothing (--no-progress).
        plain_lines: without a terminal, write a line per `PLAIN_STEP` of the total; False when
            the caller logs its own lines (the trainer's log period).
    """
    if shows_bar(enabled):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                    dynamic_ncols=True)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                         enabled=enabled and plain_lines)


class PlainProgress:
    """A progress display without carriage returns: plain lines to stderr at every
    `PLAIN_STEP` of the total and at the end, or silent when not `enabled`."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._start = self._last_written = initial
        self.enabled = enabled
        self._started_at = time.perf_counter()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        """Count `count` more; write a line when another `PLAIN_STEP` of the total is done."""
        self.n += count
        if self.enabled and self.total and (self.n - self._last_written) >= PLAIN_STEP * self.total:
            self._write()

    def set_postfix(self, **values: Any) -> None:
        """Ignored: the caller logs such values in its own lines."""

    def close(self) -> None:
        """Write the final count once (when anything was counted since the last line)."""
        if not self._closed and self.enabled and self.n != self._last_written:
            self._write()
        self._closed = True

    def _write(self) -> None:
        self._last_written = self.n
        elapsed = time.perf_counter() - self._started_at
        rate = (self.n - self._start) / elapsed if elapsed > 0 else 0.0
        of_total = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        label = f"{self.desc}: " if self.desc else ""
        print(f"{label}{self.n}{of_total} {self.unit}, {rate:.1f} {self.unit}/s", file=sys.stderr,
              flush=True)
