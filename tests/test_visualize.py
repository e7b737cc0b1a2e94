"""ssd.analysis, ssd.visualize, ssd.drawing and ssd-visualize (scripts/visualize.py): the
numbers are the loss's, the PNGs are real pictures that change with their input, and the
ground truth comes through the config's data set in every format."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script

from ssd.analysis import (
    annotation_path,
    find_dataset_image,
    location_indices,
    match_priors,
    mine_negatives,
    prior_layers,
    read_voc_objects,
    read_voc_target,
)
from ssd.box_utils import cxcywh_to_xyxy
from ssd.cli.visualize import parse_args
from ssd.config import load_config
from ssd.data import SHAPES_CLASSES, DataError, VOCDataset, make_shapes
from ssd.data.convert import convert_dataset
from ssd.drawing import save_image
from ssd.loss import assign_targets, prepare_targets
from ssd.modeling import build_model
from ssd.priors import priors_from_config
from ssd.visualize import draw_matches, draw_mining, draw_priors

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"
SCRIPT = REPO_ROOT / "scripts" / "visualize.py"
FEATURE_MAPS, RATIOS = [20, 10, 5, 2], [[2], [2], [2], [2]]  # tests/configs/ssd7_160.yaml


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cfg():
    return load_config(SHAPES_CONFIG)


@pytest.fixture(scope="module")
def priors(cfg):
    return priors_from_config(cfg.model.priors, cfg.model.image_size)  # [2116, 4]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Two generated shapes images with their VOC XML files."""
    root = tmp_path_factory.mktemp("visualize_shapes")
    make_shapes(root, num_train=2, num_test=0, image_size=160, seed=1)
    images = root / "VOCshapes" / "JPEGImages"
    return [images / "000000.jpg", images / "000001.jpg"]


@pytest.fixture(scope="module")
def script():
    return load_script("visualize")


def shapes_options(shapes) -> list[str]:
    """--opts that make the config's data set the `shapes` fixture's (its settings)."""
    return ["--opts", f"data.root={shapes[0].parents[2]}", "data.shapes.num_train=2",
            "data.shapes.num_test=0", "data.shapes.image_size=160", "data.shapes.seed=1"]


def _target(path):
    return read_voc_target(annotation_path(path), SHAPES_CLASSES)


# ---------------------------------------------------------------------------- numbers
def test_location_indices_and_layers_follow_the_prior_order(priors):
    # layer 1 starts after 20*20*4 = 1600 priors; cell (5, 7) is number 5*10 + 7 = 57 of it
    indices = location_indices(FEATURE_MAPS, RATIOS, layer=1, row=5, col=7)
    assert indices.tolist() == [1600 + 57 * 4 + a for a in range(4)]
    centres = priors[indices, :2]  # step 16 on a 160 px input: ((7 + 0.5) * 16, (5 + 0.5) * 16)
    torch.testing.assert_close(centres, torch.tensor([[0.75, 0.55]] * 4))
    torch.testing.assert_close(priors[indices[0], 2:], torch.tensor([36 / 160, 36 / 160]))
    assert torch.bincount(prior_layers(FEATURE_MAPS, RATIOS)).tolist() == [1600, 400, 100, 16]
    with pytest.raises(ValueError, match="layer 4 does not exist.*4 feature maps"):
        location_indices(FEATURE_MAPS, RATIOS, layer=4, row=0, col=0)
    with pytest.raises(ValueError, match="outside the 2x2 map"):
        location_indices(FEATURE_MAPS, RATIOS, layer=3, row=2, col=0)


def test_read_voc_target_normalises_as_the_data_set(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(
        "<annotation><size><width>200</width><height>100</height><depth>3</depth></size>"
        "<object><name>star</name><difficult>0</difficult><bndbox><xmin>21</xmin><ymin>11</ymin>"
        "<xmax>101</xmax><ymax>61</ymax></bndbox></object>"
        "<object><name>cross</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>11</xmax><ymax>11</ymax></bndbox></object></annotation>")
    target = read_voc_target(xml, SHAPES_CLASSES)
    torch.testing.assert_close(target, torch.tensor([[0.1, 0.1, 0.5, 0.6, 3.0]]))
    assert read_voc_target(xml, SHAPES_CLASSES, keep_difficult=True)[:, 4].tolist() == [3.0, 5.0]
    with pytest.raises(DataError, match="unknown class 'star'"):
        read_voc_target(xml, ["circle"])
    assert annotation_path("/d/VOC2007/JPEGImages/0042.jpg") == Path("/d/VOC2007/Annotations/0042.xml")


def test_matches_are_the_losss_positives(priors):
    # One object exactly on prior 1830 (IoU 1), one tiny object no prior reaches 0.5 with.
    exact = cxcywh_to_xyxy(priors[1830])
    target = torch.tensor([[*exact.tolist(), 2.0], [0.9, 0.9, 0.93, 0.92, 4.0]])
    matches = match_priors(target, priors, num_classes=7)
    gt, valid = prepare_targets([target], 7)
    assigned = assign_targets(gt, valid, priors, 0.5, (0.1, 0.2))
    assert torch.equal(matches.positive, assigned.positive[0])
    assert torch.equal(matches.labels, assigned.labels[0])
    assert matches.iou[1830] == pytest.approx(1.0) and matches.gt_index[1830] == 0
    assert matches.labels[1830] == 3  # class 2 + background
    tiny = matches.positive & (matches.gt_index == 1)
    assert int(tiny.sum()) == 1 and bool(matches.forced[tiny].all())  # only its best prior
    assert (matches.iou[matches.positive & ~matches.forced] >= 0.5).all()


def test_mining_keeps_ratio_times_positives_hardest_first(priors):
    target = torch.tensor([[0.2, 0.2, 0.6, 0.7, 1.0]])
    conf = torch.zeros(len(priors), 7)
    hard = torch.tensor([5, 900, 2100])  # made hard: low background logit
    conf[hard, 0] = torch.tensor([-3.0, -5.0, -4.0])
    mined = mine_negatives(target, priors, conf, neg_pos_ratio=3)
    num_positive = int(match_priors(target, priors, 7).positive.sum())
    assert mined.num_positive == num_positive > 0
    assert len(mined.indices) == 3 * num_positive
    assert mined.indices[:3].tolist() == [900, 2100, 5]  # by decreasing background loss
    assert (mined.loss[:-1] >= mined.loss[1:]).all()
    assert not match_priors(target, priors, 7).positive[mined.indices].any()
    assert len(mine_negatives(target, priors, conf, neg_pos_ratio=1).indices) == num_positive
    assert len(mine_negatives(target[:0], priors, conf).indices) == 0  # no objects, no negatives


# --------------------------------------------------------------------------- pictures
def _is_picture(canvas):
    return canvas.dtype == np.uint8 and canvas.ndim == 3 and canvas.std() > 20


def test_pictures_change_with_their_input(shapes, priors, cfg):
    first, second = (cv2.imread(str(path)) for path in shapes)
    target_a, target_b = _target(shapes[0]), _target(shapes[1])
    a = draw_priors(first, priors, FEATURE_MAPS, RATIOS, 160)
    assert _is_picture(a)
    assert not np.array_equal(a, draw_priors(second, priors, FEATURE_MAPS, RATIOS, 160))
    single = draw_priors(first, priors, FEATURE_MAPS, RATIOS, 160, layer=2)
    assert single.shape != a.shape and _is_picture(single)
    assert not np.array_equal(single, draw_priors(first, priors, FEATURE_MAPS, RATIOS, 160, layer=1))

    m = draw_matches(first, target_a, priors, SHAPES_CLASSES)
    assert _is_picture(m)
    assert not np.array_equal(m, draw_matches(first, target_b, priors, SHAPES_CLASSES))

    torch.manual_seed(0)
    conf = torch.randn(len(priors), 7)
    n = draw_mining(first, target_a, priors, conf, SHAPES_CLASSES, image_size=160)
    assert _is_picture(n)
    assert not np.array_equal(n, draw_mining(first, target_a, priors, -conf, SHAPES_CLASSES,
                                             image_size=160))
    empty = draw_mining(first, target_a[:0], priors, conf, SHAPES_CLASSES, image_size=160)
    assert _is_picture(empty) and empty.shape != n.shape


# ---------------------------------------------------------------------------- script
def _png(path):
    assert path.is_file() and path.stat().st_size > 10_000
    canvas = cv2.imread(str(path))
    assert _is_picture(canvas), path
    return canvas


def test_script_writes_the_three_pictures(shapes, script, tmp_path, capsys):
    image = str(shapes[0])
    config = ["--config", str(SHAPES_CONFIG), *shapes_options(shapes)]
    outputs = {}
    for kind, extra in [("priors", []), ("priors", ["--layer", "0"]), ("matches", []),
                        ("mining", ["--ratio", "2", "--max-tiles", "12"])]:
        out = tmp_path / f"{kind}{''.join(extra)}.png"
        assert script.main([kind, "--image", image, *extra, "--out", str(out), *config]) == 0
        outputs[out.name] = _png(out)
    assert f"Wrote {tmp_path / 'matches.png'}" in capsys.readouterr().out
    # Default output name, from another folder.
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert script.main(["matches", "--image", image, *config]) == 0
    finally:
        os.chdir(cwd)
    assert np.array_equal(_png(tmp_path / "out" / "000000_matches.png"), outputs["matches.png"])
    # The other image's annotation, given explicitly, changes the matches picture.
    other = tmp_path / "other.png"
    script.main(["matches", "--image", image, "--annotation",
                 str(annotation_path(shapes[1])), "--out", str(other), *config])
    assert not np.array_equal(_png(other), outputs["matches.png"])
    # The image id instead of the file: the same image and objects.
    by_id = tmp_path / "by_id.png"
    script.main(["matches", "--image", "000000", "--out", str(by_id), *config])
    assert np.array_equal(_png(by_id), outputs["matches.png"])


def test_mining_depends_on_the_weights(shapes, script, cfg, tmp_path):
    torch.manual_seed(1)
    weights = tmp_path / "other_init.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, weights)
    common = ["mining", "--image", str(shapes[0]), "--config", str(SHAPES_CONFIG)]
    opts = shapes_options(shapes)
    script.main([*common, "--out", str(tmp_path / "seed0.png"), *opts])
    script.main([*common, "--weights", str(weights), "--out", str(tmp_path / "weights.png"), *opts])
    script.main([*common, "--seed", "1", "--out", str(tmp_path / "seed1.png"), *opts])
    seed0, with_weights, seed1 = (_png(tmp_path / name) for name in
                                  ("seed0.png", "weights.png", "seed1.png"))
    assert not np.array_equal(seed0, with_weights)
    # Same model (seed 1) either way: the same negatives, only the title line differs.
    assert seed1.shape == with_weights.shape
    assert np.array_equal(seed1[100:], with_weights[100:])


def test_script_errors_are_clear(shapes, script, tmp_path):
    image = tmp_path / "lonely.jpg"
    image.write_bytes(shapes[0].read_bytes())  # a copy outside the data set, under another name
    with pytest.raises(FileNotFoundError, match=r"lonely\.jpg is not an image of the config's "
                                                r"data set \(data.format shapes"):
        script.main(["matches", "--image", str(image), "--config", str(SHAPES_CONFIG),
                     *shapes_options(shapes)])
    with pytest.raises(FileNotFoundError, match=r"Annotation not found: .*none\.xml \(--annotation\)"):
        script.main(["matches", "--image", str(image), "--config", str(SHAPES_CONFIG),
                     "--annotation", str(tmp_path / "none.xml")])
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        script.main(["priors", "--image", str(image), "--config", str(SHAPES_CONFIG),
                     "--layer", "7", "--out", str(tmp_path / "x.png")])
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        script.main(["priors", "--image", str(tmp_path / "none.jpg")])
    with pytest.raises(FileNotFoundError, match="Weights file not found"):
        script.main(["mining", "--image", str(shapes[0]), "--weights", str(tmp_path / "no.pth")])
    with pytest.raises(SystemExit):
        parse_args(["histogram", "--image", str(image)])


def test_read_voc_target_is_the_data_sets_training_target(shapes):
    """Same parser, same clipping, same coordinate origin as VOCDataset: identical targets."""
    root = shapes[0].parents[2]
    dataset = VOCDataset(root, [("shapes", "trainval")], class_names=list(SHAPES_CLASSES),
                         verbose=False)
    for index, path in enumerate(shapes):
        _, expected = dataset[index]  # float32 [n, 5], no transform
        assert dataset.records[index].image_path == path
        torch.testing.assert_close(_target(path), torch.from_numpy(expected), rtol=0, atol=0)
    target, difficult = read_voc_objects(annotation_path(shapes[0]), SHAPES_CLASSES)
    assert len(target) == len(difficult) and difficult.dtype == torch.bool


# ------------------------------------------------------------- YOLO and COCO data sets
CONVERTED_SPLITS = {  # the converted shapes fixture has one split, trainval: test on it too
    "yolo": ["data.yolo.train_split=trainval", "data.yolo.test_split=trainval"],
    "coco": ["data.coco.train_annotations=annotations/instances_trainval.json",
             "data.coco.train_images=trainval",
             "data.coco.test_annotations=annotations/instances_trainval.json",
             "data.coco.test_images=trainval"],
}


@pytest.fixture(scope="module", params=sorted(CONVERTED_SPLITS))
def converted(request, shapes, tmp_path_factory):
    """The `shapes` fixture converted to YOLO or COCO: (its image 000000, the config overrides
    that read it)."""
    fmt = request.param
    out = tmp_path_factory.mktemp(f"visualize_{fmt}") / fmt
    convert_dataset(shapes[0].parents[2], out, "voc", fmt, class_names=list(SHAPES_CLASSES),
                    progress=False)
    image = next(out.rglob("000000.jpg"))
    return image, [f"data.format={fmt}", f"data.root={out}", "data.class_names=null",
                   *CONVERTED_SPLITS[fmt]]


def test_pictures_read_the_objects_of_a_yolo_or_coco_set(converted, shapes, script, tmp_path):
    """No VOC XML next to the image: the objects come from the YOLO labels / COCO json, the
    same boxes as the VOC original's (up to the converter's rounding)."""
    image, overrides = converted
    assert not annotation_path(image).exists()
    found = find_dataset_image(load_config(SHAPES_CONFIG, overrides=overrides), image)
    assert found.image_path == image and found.class_names == list(SHAPES_CLASSES)
    torch.testing.assert_close(found.target[~found.difficult], _target(shapes[0]), rtol=0, atol=1e-3)
    for kind in ("matches", "mining"):
        out = tmp_path / f"{kind}.png"
        assert script.main([kind, "--image", str(image), "--config", str(SHAPES_CONFIG),
                            "--max-tiles", "4", "--out", str(out), "--opts", *overrides]) == 0
        _png(out)


def test_picture_modules_do_not_import_the_predictor():
    """Analysis, pictures and drawing stand on their own: none imports ssd.predictor."""
    for name in ("analysis", "visualize", "drawing", "images"):
        tree = ast.parse((REPO_ROOT / "ssd" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        assert "ssd.predictor" not in imported, name


def test_pictures_have_ordinary_permissions(shapes, script, tmp_path):
    previous = os.umask(0o022)
    try:
        for kind in ("priors", "matches", "mining"):
            assert script.main([kind, "--image", str(shapes[0]), "--config", str(SHAPES_CONFIG),
                                "--max-tiles", "4", "--out", str(tmp_path / f"{kind}.png"),
                                *shapes_options(shapes)]) == 0
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matches.png", "mining.png", "priors.png"]
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_save_image_formats_and_errors(tmp_path):
    canvas = np.zeros((20, 30, 3), np.uint8)
    canvas[5:15, 5:25] = (0, 128, 255)
    save_image(tmp_path / "a.png", canvas)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "a.png")), canvas)  # lossless
    save_image(tmp_path / "sub" / "b.jpg", canvas)
    assert np.abs(cv2.imread(str(tmp_path / "sub" / "b.jpg")).astype(int) - canvas).mean() < 8
    with pytest.raises(ValueError, match=r"c\.gif: expected a \.png, \.jpg or \.jpeg"):
        save_image(tmp_path / "c.gif", canvas)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "sub"]  # nothing half-written


def test_script_runs_as_a_program(shapes, tmp_path):
    """The one subprocess run of scripts/visualize.py: from another folder, exit status 0."""
    out = tmp_path / "priors.png"
    result = subprocess.run([sys.executable, str(SCRIPT), "priors", "--image", str(shapes[0]),
                             "--config", str(SHAPES_CONFIG), "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Wrote {out}" in result.stdout
    _png(out)
