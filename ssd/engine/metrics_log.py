"""Training logs: metrics.jsonl (one JSON object per line), optional TensorBoard, a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends records to `<output_dir>/metrics.jsonl` and mirrors scalars to TensorBoard.

    TensorBoard is used only when the `tensorboard` package is installed.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _tensorboard_writer(self.path.parent / "tensorboard")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; numeric values also go to TensorBoard under `<kind>/<key>`."""
        if not self.enabled:
            return
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record.get("iteration", 0)
            for key, value in record.items():
                if key not in ("iteration", "kind") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)
            self._writer.flush()

    def truncate_after(self, iteration: int) -> None:
        """Drop records past `iteration` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        self.path.write_text("".join(line + "\n" for line in kept))

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
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
