"""Detection files in the PASCAL VOC results format, for the official devkit (and back).

One file per class, ``<prefix><class>.txt`` (default ``comp4_det_test_<class>.txt``), one line
per detection: ``<image id> <score> <xmin> <ymin> <xmax> <ymax>``, coordinates in the
devkit's 1-based pixel frame (the frame of the XML annotations). The class names come from
data (a checkpoint, data.yaml, a COCO file), so each is written as ``safe_file_name`` gives it:
unchanged when it is an ordinary name, otherwise without path separators and with a tag (e.g.
``x/../victim`` -> ``comp4_det_test_x_.._victim-<tag>.txt``); every file stays in the folder.

Frames: detections given to ``write_voc_results`` are in this project's 0-based evaluation
frame (XML values minus 1, see ``ssd.evaluation.voc``); 1 is added on writing and subtracted
on reading, so ``load_voc_results(write_voc_results(d))`` gives back ``d`` (to the printed
precision) and scores the same under ``voc_evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ssd.fileio import atomic_write, safe_file_names

DEFAULT_PREFIX = "comp4_det_test_"


def write_voc_results(
    dets: Mapping[Any, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    image_ids: Sequence[Any] | None,
    class_names: Sequence[str],
    out_dir: str | Path,
    prefix: str = DEFAULT_PREFIX,
) -> list[Path]:
    """Write one VOC results file per class (every class, empty files included).

    Args:
        dets: either ``{image_id: {"boxes": ndarray[k, 4] xyxy 0-based pixels,
            "scores": ndarray[k], "labels": int ndarray[k] 0-based}}`` (the ``voc_evaluate``
            input), or a list of such per-image dicts aligned with ``image_ids``.
        image_ids: for a dict, the images to write and their order (None: all keys in
            order); for a list, the id of each entry (written with ``str``, e.g. "000001").
        class_names: foreground class names in label order (they name the files, through
            ``safe_file_names``).
        out_dir: directory to write into (created if missing); each file is written
            atomically, with the permissions of an ordinary file.
        prefix: file name prefix.

    Returns:
        The paths written, in class order.
    """
    pairs = _image_pairs(dets, image_ids)
    lines: list[list[str]] = [[] for _ in class_names]
    for image_id, record in pairs:
        boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4) + 1.0  # 1-based
        scores = np.asarray(record["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(record["labels"], dtype=np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"image {image_id!r}: labels must lie in 0..{len(class_names) - 1}, "
                             f"got {labels.min()}..{labels.max()}")
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(),
                                                  labels.tolist()):
            lines[label].append(f"{image_id} {score:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, class_lines in zip(results_file_names(class_names, prefix), lines):
        path = out_dir / name
        atomic_write(path, "".join(class_lines))
        paths.append(path)
    return paths


def load_voc_results(
    results_dir: str | Path, class_names: Sequence[str], prefix: str = DEFAULT_PREFIX
) -> dict[str, dict[str, np.ndarray]]:
    """Read VOC results files back into the ``voc_evaluate`` detection format.

    Args:
        results_dir: directory holding ``<prefix><class>.txt`` (a missing file = no detections).
        class_names: foreground class names in label order.

    Returns:
        ``{image_id (str): {"boxes": [k, 4] xyxy 0-based pixels, "scores": [k],
        "labels": [k] int64}}`` with detections grouped per image in file order.
    """
    columns: dict[str, list[tuple[list[float], float, int]]] = {}
    for label, name in enumerate(results_file_names(class_names, prefix)):
        path = Path(results_dir) / name
        if not path.is_file():
            continue
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(f"{path}:{line_number}: expected 'id score x1 y1 x2 y2', "
                                 f"got {line!r}")
            box = [float(value) - 1.0 for value in fields[2:]]  # back to 0-based
            columns.setdefault(fields[0], []).append((box, float(fields[1]), label))
    return {
        image_id: {
            "boxes": np.array([row[0] for row in rows], dtype=np.float64).reshape(-1, 4),
            "scores": np.array([row[1] for row in rows], dtype=np.float64),
            "labels": np.array([row[2] for row in rows], dtype=np.int64),
        }
        for image_id, rows in columns.items()
    }


def results_file_names(class_names: Sequence[str], prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The results file name of each class, ``<prefix><safe class name>.txt``, in label order.

    Raises:
        ValueError: a class name is empty, or two class names would share a file.
    """
    return [f"{prefix}{name}.txt" for name in safe_file_names(class_names, "class name")]


def _image_pairs(dets, image_ids) -> list[tuple[Any, Mapping[str, Any]]]:
    """(image id, per-image dict) pairs from either accepted form of ``dets``."""
    if isinstance(dets, Mapping):
        ids = list(dets) if image_ids is None else list(image_ids)
        return [(image_id, dets[image_id]) for image_id in ids if image_id in dets]
    if image_ids is None or len(image_ids) != len(dets):
        raise ValueError("a list of detections needs image_ids of the same length "
                         f"(got {len(dets)} detections and "
                         f"{'no' if image_ids is None else len(image_ids)} ids)")
    return list(zip(image_ids, dets))
