"""The pictures of `ssd-data check`: histograms of box shapes per class, and box centres
(matplotlib, Agg, no pyplot; written with atomic_write)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ssd.data.check import box_shapes
from ssd.evaluation.plots import _colours
from ssd.fileio import atomic_write

HISTOGRAM_BINS = 30
FIGURE_DPI = 80
SHAPE_AXES = (("width", "width (px at the network input)", False),
              ("height", "height (px at the network input)", False),
              ("aspect", "aspect ratio width / height (log scale)", True),
              ("area", "area (fraction of the image, log scale)", True))
CENTRE_MARKER_SIZE = 4


def plot_box_shapes(boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    image_size: int, path: str | Path) -> Path:
    """One histogram panel per SHAPE_AXES quantity of normalised xyxy boxes [N, 4] (labels
    [N]), one outline per class; saved as a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    shapes = box_shapes(boxes, image_size) if len(boxes) else {}
    colours = _colours(len(class_names))
    for panel, (key, title, logarithmic) in enumerate(SHAPE_AXES):
        axes = figure.add_subplot(2, 2, panel + 1)
        values = shapes.get(key, np.zeros(0))
        positive = values[values > 0]
        if len(positive):
            low, high = positive.min(), positive.max()
            bins = (np.geomspace(low, high * 1.0001, HISTOGRAM_BINS + 1) if logarithmic
                    else np.linspace(0, high * 1.0001, HISTOGRAM_BINS + 1))
            for label, (name, colour) in enumerate(zip(class_names, colours)):
                chosen = values[labels == label]
                if len(chosen):
                    axes.hist(chosen, bins=bins, histtype="step", color=colour, label=name)
        if logarithmic:
            axes.set_xscale("log")
        axes.set(xlabel=title, ylabel="boxes")
        axes.grid(alpha=0.3)
    if len(boxes):
        figure.axes[0].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return _save(figure, path)


def plot_box_centres(boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     path: str | Path) -> Path:
    """The centres of normalised xyxy boxes [N, 4] (labels [N]) on the unit image square, one
    colour per class; saved as a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 6), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 if len(boxes) else np.zeros((0, 2))
    for label, (name, colour) in enumerate(zip(class_names, _colours(len(class_names)))):
        chosen = centres[labels == label]
        if len(chosen):
            axes.scatter(chosen[:, 0], chosen[:, 1], s=CENTRE_MARKER_SIZE, color=colour, label=name)
    axes.set(xlim=(0, 1), ylim=(1, 0), xlabel="x / image width", ylabel="y / image height",
             title="box centres", aspect="equal")
    if len(boxes):
        axes.legend(fontsize=7, loc="upper right", markerscale=2)
    return _save(figure, path)


def _save(figure, path: str | Path) -> Path:
    atomic_write(path, lambda stream: figure.savefig(stream, format="png"))
    return Path(path)
