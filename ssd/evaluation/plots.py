"""Evaluation pictures (matplotlib, Agg, no pyplot): precision-recall curves, the confusion
matrix, and precision / recall / F1 versus score threshold."""

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



CELL_TEXT_MAX_CLASSES = 30  # above this many classes the matrix cells carry no numbers
DARK_CELL = 0.5  # cells at least this full get white text


def plot_confusion_matrix(matrix: Mapping[str, Any], path: str | Path) -> Path:
    """Draw a confusion matrix (``ssd.evaluation.analysis.confusion_matrix``) as a PNG: rows
    are true classes, columns predicted ones, background last; each row normalised by its
    number of objects (the background row by its number of false positives). Written
    atomically. Returns ``path`` as a Path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    names = list(matrix["classes"])
    values = matrix["normalised"]
    side = max(5.0, 0.45 * len(names) + 2.5)
    figure = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class's row")
    axes.set_xticks(range(len(names)), labels=names, rotation=90, fontsize=8)
    axes.set_yticks(range(len(names)), labels=names, fontsize=8)
    axes.set(xlabel="predicted", ylabel="true")
    if len(names) <= CELL_TEXT_MAX_CLASSES:
        for row, cells in enumerate(values):
            for col, value in enumerate(cells):
                if value > 0:
                    axes.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                              color="white" if value >= DARK_CELL else "black")
    axes.set_title(f"confusion matrix (score >= {matrix['score_threshold']:.3f}, "
                   f"IoU >= {matrix['iou_threshold']:.2f})", fontsize=10)
    figure.tight_layout()
    atomic_write(path, lambda stream: figure.savefig(stream, format="png"))
    return path


def plot_threshold_curves(sweep: Mapping[str, Any], path: str | Path) -> Path:
    """Precision, recall and F1 versus score threshold (``ssd.evaluation.analysis.
    threshold_sweep``) in three panels: one thin line per class, all classes together in
    black, the best-F1 threshold dashed. Written atomically. Returns ``path`` as a Path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(14, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    names = list(sweep["per_class"])
    colours = _colours(len(names))
    best = sweep["best_f1"]["threshold"]
    for number, key in enumerate(("precision", "recall", "f1"), start=1):
        axes = figure.add_subplot(1, 3, number)
        for name, colour in zip(names, colours):
            axes.plot(sweep["thresholds"], sweep["per_class"][name][key], color=colour,
                      linewidth=0.9, alpha=0.7, label=name)
        axes.plot(sweep["thresholds"], sweep["overall"][key], color="black", linewidth=2.2,
                  label="all classes")
        if best is not None:
            axes.axvline(best, color="black", linestyle="--", linewidth=1.0,
                         label=f"best F1 at {best:.3f}")
        axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel=key, title=key)
        axes.grid(alpha=0.3)
    figure.axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                           ncol=1 if len(names) <= 25 else 2)
    figure.tight_layout()
    atomic_write(path, lambda stream: figure.savefig(stream, format="png"))
    return path
