"""Training logs: metrics.jsonl (one JSON object per line), optional TensorBoard, a PNG plot."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ssd.fileio import atomic_write

logger = logging.getLogger(__name__)


class MetricsFileError(ValueError):
    """A metrics.jsonl line other than the last is not a JSON object; the message names the
    file and the line number."""


class MetricsLog:
    """Appends records to `<output_dir>/metrics.jsonl` and mirrors scalars to TensorBoard.

    TensorBoard is used only when the `tensorboard` package is installed. An interrupted
    write (a killed process, a full disk) can only damage the last line: reading drops it with a
    warning, and the first append of a MetricsLog removes it first (see `read_metrics`).
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._writer = None
        self._tail_checked = False  # whether the file is known to end with a whole line
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _tensorboard_writer(self.path.parent / "tensorboard")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; numeric values also go to TensorBoard under `<kind>/<key>`."""
        if not self.enabled:
            return
        if not self._tail_checked:
            _end_with_whole_line(self.path)
            self._tail_checked = True
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record.get("iteration", 0)
            for key, value in record.items():
                if key not in ("iteration", "kind") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)
            self._writer.flush()

    def truncate_after(self, iteration: int) -> None:
        """Drop records past `iteration` (a resumed run rewrites them), and a damaged last line.

        The file is replaced atomically: when the new one cannot be written (a full disk), the
        error is raised and the old file is left as it was.

        Raises:
            MetricsFileError: a line other than the last is not a JSON object.
        """
        if not self.enabled or not self.path.is_file():
            return
        text = self.path.read_text()
        kept = "".join(line + "\n" for record, line in _read_records(self.path, text)
                       if record.get("iteration", 0) <= iteration)
        if kept != text:
            atomic_write(self.path, kept)
        self._tail_checked = True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: optional
        return None
    return SummaryWriter(str(folder))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order (blank lines are skipped).

    A last line that is not a JSON object is what an interrupted write leaves: it is dropped
    with a warning naming the file and the line.

    Raises:
        MetricsFileError: another line is not a JSON object (names the file and the line).
    """
    path = Path(path)
    return [record for record, _ in _read_records(path, path.read_text())]


def _read_records(path: Path, text: str) -> list[tuple[dict[str, Any], str]]:
    """(record, its line) for the lines of `text`, the content of `path`; see `read_metrics`."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        record, problem = _decode_record(line)
        if problem is None:
            records.append((record, line))
        elif index == len(lines) - 1:
            logger.warning("%s line %d is incomplete (%s; a write was interrupted): dropped it",
                           path, number, problem)
        else:
            raise MetricsFileError(f"{path} line {number}: {problem}; expected one JSON object "
                                   f"per line")
    return records


def _decode_record(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a line holding a JSON object, else (None, what is wrong with it)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    return record, None


def _end_with_whole_line(path: Path) -> None:
    """Before appending to `path`: a last line without its newline (an interrupted write) is
    cut off with a warning, or completed when it holds a whole record, so that the next record
    starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    record, problem = _decode_record(data[start:].decode("utf-8", errors="replace"))
    if record is not None:
        with path.open("ab") as stream:
            stream.write(b"\n")
        return
    logger.warning("%s line %d is incomplete (%s; a write was interrupted): removed it before "
                   "appending", path, data.count(b"\n") + 1, problem)
    os.truncate(path, start)


def plot_metrics(metrics_path: str | Path, out_path: str | Path) -> Path:
    """PNG with the loss curves (left) and the evaluation mAP (right) of a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "loss_loc", "loss_conf"):
        points = [(r["iteration"], r[key]) for r in train if key in r]
        if points:
            ax_loss.plot(*zip(*points), label=key)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if evals:
        ax_map.plot([r["iteration"] for r in evals], [r["mAP"] for r in evals], "o-")
    ax_map.set(xlabel="iteration", ylabel="mAP", title="evaluation mAP", ylim=(0, 1))
    ax_map.grid(alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
