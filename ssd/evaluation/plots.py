"""Precision-recall curves of a ``voc_evaluate`` result as a PNG (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ssd.fileio import atomic_write


def plot_pr_curves(result: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Draw one precision-recall curve per class, with its AP in the legend, and save a PNG.

    Args:
        result: a ``voc_evaluate`` result (uses "precision", "recall", "ap", "mAP",
            "excluded" and "metric").
        path: output file (parent directories are created; written atomically, with the
            permissions of an ordinary file).
        title: figure title; default "<metric> mAP <value>".

    Returns:
        ``path`` as a Path. Classes excluded from the mean are listed in the legend title,
        not drawn. Uses a Figure with the Agg canvas, so it touches no global pyplot state.
    """
    # Imported here: matplotlib takes ~0.4 s to import and only this function needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(9, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.08, 0.1, 0.62, 0.8))
    names = [name for name in result["ap"] if name not in result.get("excluded", [])]
    colours = _colours(len(names))
    for name, colour in zip(names, colours):
        axes.plot(result["recall"][name], result["precision"][name], color=colour,
                  linewidth=1.3, label=f"{name} ({result['ap'][name]:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    axes.grid(alpha=0.3)
    mean = result.get("mAP", math.nan)
    shown = f"{mean:.4f}" if math.isfinite(mean) else "n/a (no ground truth)"
    axes.set_title(title or f"{result.get('metric', '')} mAP {shown}".strip())
    excluded = result.get("excluded", [])
    legend_title = "class (AP)" + (f"\nnot scored: {', '.join(excluded)}" if excluded else "")
    if names:  # a legend without entries only draws an empty box (and warns)
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title=legend_title,
                    title_fontsize=8, ncol=1 if len(names) <= 25 else 2)
    atomic_write(path, lambda stream: figure.savefig(stream, format="png"))
    return path


def _colours(count: int) -> list:
    """``count`` distinguishable colours (tab10, tab20, then a sampled hsv wheel)."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["hsv"](i / count) for i in range(count)]

