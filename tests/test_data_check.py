"""ssd-data check: counts of a generated VOC set with known defects, and prior coverage
(before and after --fit-priors) equal to what `match` gives box by box."""

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ssd.box_utils import match
from ssd.cli.common import run_cli
from ssd.cli.data import main
from ssd.prior_coverage import priors_of

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"  # SSD7 at 160 px, aspect ratios [2]
SIZE = 160
CLASSES = ["square", "thin"]
THRESHOLD = 0.5
# A 64 x 8 px box (aspect 8) centred on a cell centre of the 8 px grid: its best prior of
# aspect 2 overlaps it at IoU ~0.3, one of aspect 8 at up to ~1.
THIN = (21, 49, 84, 56)
SQUARE = (41, 41, 80, 80)


def obj(name, box, difficult=0):
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def write_set(root: Path, split: str, images: dict) -> None:
    """VOCcheck/{Annotations, JPEGImages, ImageSets/Main/<split>.txt} of {id: [objects]}."""
    folder = root / "VOCcheck"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        xml = (f"<annotation><size><width>{SIZE}</width><height>{SIZE}</height></size>"
               + "".join(objects) + "</annotation>")
        (folder / "Annotations" / f"{image_id}.xml").write_text(xml)
        cv2.imwrite(str(folder / "JPEGImages" / f"{image_id}.jpg"), np.full((SIZE, SIZE, 3), 90, np.uint8))
    (folder / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(images) + "\n")


@pytest.fixture
def defect_set(tmp_path):
    """Training set: 8 images, 2 degenerate boxes, 1 box clipped to the image, 1 duplicate,
    1 difficult object, 1 image without objects, 1 unreadable and 1 missing image; the thin
    class has only 64 x 8 boxes. Test set: 2 clean images."""
    train = {
        "a": [obj("square", SQUARE), obj("thin", THIN)],
        "b": [obj("square", SQUARE), obj("square", SQUARE)],  # a duplicate
        "c": [obj("thin", THIN), obj("square", (50, 50, 40, 90))],  # inverted: degenerate
        "d": [obj("thin", (THIN[0], 97, THIN[2], 104)), obj("square", (30, 30, 30, 60))],  # zero width
        "e": [obj("square", (120, 120, 190, 170))],  # clipped to the image
        "f": [obj("square", (1, 1, 30, 30), difficult=1)],  # difficult only: no training objects
        "g": [obj("thin", THIN)],  # its image is unreadable
        "h": [obj("square", SQUARE)],  # its image is missing
    }
    write_set(tmp_path, "train", train)
    write_set(tmp_path, "test", {"t1": [obj("square", SQUARE)], "t2": [obj("thin", THIN)]})
    images = tmp_path / "VOCcheck" / "JPEGImages"
    (images / "g.jpg").write_bytes(b"not an image")
    (images / "h.jpg").unlink()
    return tmp_path


def check_argv(root: Path, output: Path, *extra: str) -> list[str]:
    return ["check", "--config", str(CONFIG), "--output", str(output), *extra, "--opts",
            "data.format=voc", f"data.root={root}", 'data.train_sets=[["check", "train"]]',
            'data.test_sets=[["check", "test"]]', f"data.class_names={json.dumps(CLASSES)}",
            "model.num_classes=3"]


def coverage_through_match(boxes: torch.Tensor, priors: torch.Tensor) -> float:
    """Share of boxes [N, 4] whose best prior IoU reaches THRESHOLD, each box matched alone by
    `match` (its forced prior then carries its best IoU)."""
    valid = torch.ones(len(boxes), 1, dtype=torch.bool)
    _, _, best_iou = match(boxes[:, None, :], valid, priors, THRESHOLD)  # [N, P]
    return float((best_iou.amax(dim=1) >= THRESHOLD).float().mean())


def normalised(box) -> list[float]:
    """A 1-based VOC pixel box as the reader normalises it."""
    return [(value - 1) / SIZE for value in box]


# The training boxes of the fixture set: thin in a, c, d and g (g's annotation is read; only
# decoding its image fails), square in a, b (twice) and e (clipped).
THIN_BOXES = torch.tensor([normalised(THIN)] * 3 + [normalised((THIN[0], 97, THIN[2], 104))])
SQUARE_BOXES = torch.tensor([normalised(SQUARE)] * 3 + [normalised((120, 120, 160, 160))])


def test_check_counts_each_defect(defect_set, tmp_path, capsys):
    assert main(check_argv(defect_set, tmp_path / "out")) == 0
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    train = report["splits"]["train"]
    assert train["images"] == 6  # a, b, c, d, e, g (f has no training objects, h no image)
    assert train["objects_per_class"] == {"square": 4, "thin": 4}
    assert train["degenerate_boxes"] == 2
    assert train["clipped_boxes"] == 1
    assert train["duplicate_boxes"] == 1
    assert train["difficult_objects"] == 0  # f, the image of the difficult object, is left out
    assert train["images_without_objects"] == 1
    assert train["missing_images"] == 1
    assert train["unreadable_images"] == 1
    assert train["truncated_images"] == 0
    assert train["coverage"]["per_class"]["thin"]["boxes"] == 4
    assert report["splits"]["test"]["objects"] == 2
    assert (tmp_path / "out" / "box_shapes.png").stat().st_size > 0
    assert (tmp_path / "out" / "box_centres.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "degenerate (dropped) 2, clipped to the image 1, duplicate 1" in printed
    assert "missing 1, unreadable 1, truncated 0" in printed


def test_fit_priors_raises_thin_coverage_as_match_counts_it(defect_set, tmp_path, capsys):
    assert main(check_argv(defect_set, tmp_path / "out", "--fit-priors")) == 0
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    printed = capsys.readouterr().out
    before, after = map(float, re.search(r"before ([\d.]+), after ([\d.]+)", printed).groups())
    thin, all_boxes = THIN_BOXES, torch.cat([THIN_BOXES, SQUARE_BOXES])
    old = priors_of(report["priors"], SIZE)
    new = priors_of(report["fit_priors"]["settings"], SIZE)
    assert report["fit_priors"]["before"] == pytest.approx(coverage_through_match(all_boxes, old), abs=0)
    assert report["fit_priors"]["after"] == pytest.approx(coverage_through_match(all_boxes, new), abs=0)
    assert f"{before:.4f}" == f"{report['fit_priors']['before']:.4f}"
    assert f"{after:.4f}" == f"{report['fit_priors']['after']:.4f}"
    thin_before = coverage_through_match(thin, old)
    assert report["splits"]["train"]["coverage"]["per_class"]["thin"]["covered"] == thin_before
    assert thin_before < THRESHOLD
    assert coverage_through_match(thin, new) > thin_before
    assert "aspect_ratios:" in printed


def test_missing_data_root_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ssd-data", *check_argv(tmp_path / "nowhere", tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "out" / "data_report.json").exists()
