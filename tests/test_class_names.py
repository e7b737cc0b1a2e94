"""Class names travel with the model: training stores the names its data set's files give,
prediction and fine-tuning see them, evaluation matches the model's classes to a data set's by
name, and a class list naming a class twice is refused for every source."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_coco import write_coco
from test_data_yolo import write_set

from ssd.cli import eval as eval_script
from ssd.cli import predict as predict_script
from ssd.config import ConfigError, load_config
from ssd.data import (
    BaseTransform,
    COCODataset,
    DataError,
    VOCDataset,
    YOLODataset,
    build_dataset,
    build_transform,
    ensure_shapes,
)
from ssd.engine.checkpoint import checkpoint_path, load_checkpoint
from ssd.engine.inference import evaluate_model, make_eval_loader
from ssd.engine.trainer import Trainer
from ssd.evaluation.dataset_eval import NOT_IN_DATASET, evaluate_detections, match_classes
from ssd.loss import MultiBoxLoss
from ssd.modeling import build_model
from ssd.postprocess import build_postprocessor
from ssd.predictor import Predictor
from ssd.weights import trained_class_names

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"  # SSD7 at 160 px
NAMES = ["ball", "player"]  # named only by the data set's files
IMAGE_SIZE = 64
ONE_OBJECT = "{label} 0.5 0.5 0.6 0.6\n"  # YOLO: a centred box of 60% of the image
FAST_RUN = ["data.num_workers=0", "solver.batch_size=2", "solver.max_iter=2",
            "solver.warmup_iters=1", "solver.lr_steps=[1]", "train.log_period=1",
            "train.checkpoint_period=2", "train.eval_period=2", "test.batch_size=2"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="ssd")


# ------------------------------------------------------------- names stored by training
def yolo_images(count: int) -> dict:
    """write_set images: `count` squares with one object each, cycling through the classes."""
    return {f"img{index}": (IMAGE_SIZE, IMAGE_SIZE, ".jpg", ONE_OBJECT.format(label=index % 2))
            for index in range(count)}


def yolo_data_yaml(root: Path) -> list[str]:
    """A YOLO set whose names are only in data.yaml."""
    for split in ("train", "val"):
        write_set(root, images=yolo_images(4), names=NAMES, split=split)
    return ["data.format=yolo", f"data.root={root}"]


def yolo_classes_txt(root: Path) -> list[str]:
    """A YOLO set whose names are only in classes.txt (one a line)."""
    for split in ("train", "val"):
        write_set(root, images=yolo_images(4), names=None, split=split)
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return ["data.format=yolo", f"data.root={root}", "data.yolo.names_file=classes.txt"]


def coco_set(root: Path) -> list[str]:
    """A COCO set whose names are only its categories (ids 4 and 9)."""
    images = [{"id": index + 1, "file_name": f"{index}.jpg", "width": IMAGE_SIZE,
               "height": IMAGE_SIZE} for index in range(4)]
    annotations = [{"id": index + 1, "image_id": index + 1, "category_id": (4, 9)[index % 2],
                    "bbox": [12, 12, 40, 40], "iscrowd": 0, "area": 1600} for index in range(4)]
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 4, "name": NAMES[0]}, {"id": 9, "name": NAMES[1]}]}
    root.mkdir()
    annotation_file, image_dir = write_coco(root, data)
    return ["data.format=coco", f"data.root={root}",
            *[f"data.coco.{split}_annotations={annotation_file.name}" for split in ("train", "test")],
            *[f"data.coco.{split}_images={image_dir.name}" for split in ("train", "test")]]


@pytest.mark.parametrize("write_data", [yolo_data_yaml, yolo_classes_txt, coco_set])
def test_training_stores_the_data_sets_class_names(tmp_path, write_data):
    """Before: the checkpoint's data.class_names stayed null and the model's classes were
    class_0, class_1 for prediction, its JSON and fine-tuning."""
    overrides = write_data(tmp_path / "data")
    cfg = load_config(SMALL_CONFIG, overrides=[*overrides, "data.class_names=null",
                                               "model.num_classes=3", *FAST_RUN])
    Trainer.from_config(cfg, output_dir=tmp_path / "run", device="cpu", progress=False).train()
    weights = checkpoint_path(tmp_path / "run", 2)
    state = load_checkpoint(weights)
    assert state["config"]["data"]["class_names"] == NAMES
    assert trained_class_names(state["model"], state["config"], str(weights)) == NAMES  # fine-tuning

    predictor = Predictor(weights, device="cpu", precision="fp32", score_threshold=0.0)
    assert predictor.class_names == NAMES
    image = next((tmp_path / "data").rglob("*.jpg"))
    found = predictor.predict(image)
    assert found and {det["class_name"] for det in found} <= set(NAMES)

    out = tmp_path / "out"
    assert predict_script.main([str(image), "--weights", str(weights), "--json", "--out", str(out),
                                "--device", "cpu", "--precision", "fp32", "--score-threshold",
                                "0.0", "--no-progress"]) == 0
    document = json.loads((out / "detections.json").read_text())
    assert document["class_names"] == NAMES
    detections = document["images"][str(image)]["detections"]
    assert detections and {det["class_name"] for det in detections} <= set(NAMES)


# ----------------------------------------------------------------- evaluation by name
SHAPES = {"num_train": 2, "num_test": 6, "image_size": 160, "seed": 3}
SHAPE_CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
PERMUTED = ["cross", "star", "circle", "hexagon", "square", "triangle"]
OVERFIT_STEPS = 6  # Adam steps on the 6 test images: mAP about 0.6 there, not saturated
LEARNING_RATE = 5e-3


def voc_layout(data_root: Path, class_names: list[str]) -> list[str]:
    """The shapes test images read as a VOC-layout set listing `class_names`."""
    return ["data.format=voc", f"data.root={data_root}", "data.test_sets=[[shapes, test]]",
            f"data.class_names={json.dumps(class_names)}"]


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory):
    """(shapes root, the model overfit on the shapes test images, its checkpoint, its config)."""
    folder = tmp_path_factory.mktemp("class_order")
    data_root = folder / "data"
    ensure_shapes(data_root, **SHAPES)
    cfg = load_config(SMALL_CONFIG, overrides=[f"data.root={data_root}", "data.num_workers=0",
                                               *[f"data.shapes.{k}={v}" for k, v in SHAPES.items()]])
    torch.manual_seed(0)
    model = build_model(cfg)
    dataset = VOCDataset(data_root, [("shapes", "test")], class_names=SHAPE_CLASSES, verbose=False)
    transform = BaseTransform(cfg.model.image_size, cfg.data.mean)
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([torch.from_numpy(transform(image)[0]).permute(2, 0, 1)  # [6, 3, S, S]
                          for image, _ in samples])
    targets = [torch.from_numpy(target) for _, target in samples]
    criterion = MultiBoxLoss(cfg.model.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), LEARNING_RATE)
    for _ in range(OVERFIT_STEPS):
        losses = criterion(*model(images), model.priors, targets)
        optimizer.zero_grad()
        (losses["loss_loc"] + losses["loss_conf"]).backward()
        optimizer.step()
    settle_batch_norm(model, images)
    weights = folder / "shapes.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "iteration": OVERFIT_STEPS},
               weights)
    return data_root, model.eval(), weights, cfg


def settle_batch_norm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set the batch norm statistics to those of `images` [B, 3, S, S] (a few steps leave the
    running averages near their initial values, which the eval mode would use)."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average: here, of this one batch
    with torch.no_grad():
        model(images)


def evaluate_on(model, cfg, overrides: list[str], class_names=None) -> dict:
    eval_cfg = load_config(SMALL_CONFIG, overrides=[*overrides, "data.num_workers=0"])
    dataset = build_dataset(eval_cfg, train=False)
    loader = make_eval_loader(dataset, build_transform(eval_cfg, train=False), batch_size=8)
    return evaluate_model(model, dataset, loader, "cpu", build_postprocessor(cfg), "voc07",
                          progress=False, class_names=class_names)


def test_eval_on_a_permuted_class_list_maps_by_name(shapes_model, tmp_path, caplog):
    """Before: the model's class k was scored as the data set's class k whatever its name."""
    data_root, model, weights, cfg = shapes_model
    same = evaluate_on(model, cfg, voc_layout(data_root, SHAPE_CLASSES), SHAPE_CLASSES)
    mapped = evaluate_on(model, cfg, voc_layout(data_root, PERMUTED), SHAPE_CLASSES)
    unmapped = evaluate_on(model, cfg, voc_layout(data_root, PERMUTED))  # label k as class k
    assert 0.3 < same["mAP"] < 1.0
    assert mapped["mAP"] == pytest.approx(same["mAP"], abs=1e-12)
    assert mapped["ap"] == pytest.approx(same["ap"])
    assert abs(unmapped["mAP"] - same["mAP"]) > 0.1

    out = tmp_path / "eval"
    argv = ["--weights", str(weights), "--device", "cpu", "--output", str(out), "--no-progress",
            "--opts", *voc_layout(data_root, PERMUTED), "data.num_workers=0"]
    assert eval_script.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mAP"] == pytest.approx(same["mAP"], abs=1e-12)
    assert "6 classes matched by name to the data set's labels (the data set lists them in another "\
           "order)" in caplog.text
    lines = (out / "comp4_det_test_circle.txt").read_text().split()
    assert lines  # circles detected by the model's circle label, written to the circle file


def test_eval_refuses_a_data_set_without_a_common_class(shapes_model, tmp_path):
    data_root, model, weights, cfg = shapes_model
    with pytest.raises(ValueError, match=r"no class name in common \(model classes \['disc'.*"
                                         r"data set classes \['circle'"):
        evaluate_on(model, cfg, voc_layout(data_root, SHAPE_CLASSES),
                    ["disc", "box", "wedge", "sun", "hex", "plus"])


def test_match_classes_rules():
    order = match_classes(["a", "b", "c"], ["c", "a", "b"])
    assert order.model_to_dataset.tolist() == [1, 2, 0] and order.scored == ["c", "a", "b"]
    assert "another order" in order.note
    assert match_classes(["a", "b"], ["a", "b"]).note is None

    extra = match_classes(["a", "b", "c"], ["c", "a"], metric="coco")  # the model knows more
    assert extra.model_to_dataset.tolist() == [1, NOT_IN_DATASET, 0]
    assert extra.scored == ["c", "a"] and "detections of ['b'] (not in the data set) left out" in extra.note

    fewer = match_classes(["b", "a"], ["a", "b", "z"])  # the data set knows more: VOC scores a, b
    assert fewer.model_to_dataset.tolist() == [1, 0] and fewer.scored == ["a", "b"]
    assert "the data set's ['z'] (unknown to the model) not scored" in fewer.note
    with pytest.raises(ValueError, match=r"classes the model was not trained on \(\['z'\]\)"):
        match_classes(["b", "a"], ["a", "b", "z"], metric="coco")
    with pytest.raises(ValueError, match=r"model classes \['a'\], data set classes \['x', 'y'\]"):
        match_classes(["a"], ["x", "y"])


class _TwoClassSet:
    """One image (VOC frame: 1-based pixels) holding a "cat" and a "dog"."""

    coordinate_origin = 1.0
    class_names = ["dog", "cat"]

    def __len__(self):
        return 1

    def get_annotation(self, index):
        return dict(image_id="one", width=100, height=100,
                    boxes=np.array([[1, 1, 40, 40], [51, 51, 100, 100]], np.float32),
                    labels=np.array([1, 0]), difficult=np.array([False, False]))


def test_eval_leaves_out_the_classes_the_data_set_does_not_have(caplog):
    """A model of three classes on a data set of two of them, in another order: each box found
    with the model's label is scored as the data set's class of that name, and the third
    class's detections are left out instead of being scored as another class."""
    model_classes = ["cat", "bird", "dog"]
    found = {0: {"boxes": np.array([[0.0, 0.0, 0.39, 0.39], [0.5, 0.5, 0.99, 0.99],
                                    [0.5, 0.5, 0.99, 0.99]], np.float32),  # (xml - 1) / size
                 "scores": np.array([0.9, 0.8, 0.95], np.float32),
                 "labels": np.array([0, 2, 1])}}  # cat, dog, bird (on the dog)
    result = evaluate_detections(_TwoClassSet(), found, "voc07", model_classes=model_classes)
    assert result["ap"] == {"dog": pytest.approx(1.0), "cat": pytest.approx(1.0)}
    assert result["detections"][0]["labels"].tolist() == [1, 0]
    assert "detections of ['bird'] (not in the data set) left out" in caplog.text
    with pytest.raises(ValueError, match=r"COCO metric"):
        evaluate_detections(_TwoClassSet(), found, "coco", model_classes=["cat"])


# ------------------------------------------------------------------ duplicate names
def test_duplicate_names_in_yolo_data_yaml_are_refused(tmp_path):
    """Before: accepted; one class vanished from the table and its results file was overwritten."""
    write_set(tmp_path, images=yolo_images(2), names=["ball", "player", "ball"])
    with pytest.raises(DataError, match=r"data.yaml lists class 'ball' twice \(labels 0 and 2\)"):
        YOLODataset(tmp_path, "train", verbose=False)


def test_duplicate_names_in_yolo_classes_txt_are_refused(tmp_path):
    write_set(tmp_path, images=yolo_images(2), names=None)
    (tmp_path / "classes.txt").write_text("ball\nplayer\nplayer\n")
    with pytest.raises(DataError, match=r"classes.txt lists class 'player' twice \(labels 1 and 2\)"):
        YOLODataset(tmp_path, "train", names_file="classes.txt", verbose=False)


def test_duplicate_coco_category_names_are_refused(tmp_path):
    annotation_file, image_dir = write_coco(tmp_path, {
        "images": [], "annotations": [],
        "categories": [{"id": 1, "name": "ball"}, {"id": 2, "name": "ball"}]})
    with pytest.raises(DataError, match=r"categories of COCO annotation file .*instances.json lists "
                                        r"class 'ball' twice"):
        COCODataset(annotation_file, image_dir, verbose=False)


def test_duplicate_names_for_a_voc_set_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"data.class_names\) lists class 'cat' twice"):
        VOCDataset(tmp_path, [], class_names=["cat", "dog", "cat"], verbose=False)


def test_duplicate_names_in_the_config_are_refused():
    with pytest.raises(ConfigError, match=r"'data.class_names' lists class 'b' twice \(labels 1 "
                                          r"and 2\)"):
        load_config(overrides=["data.class_names=[a, b, b]", "model.num_classes=4"])


def test_classes_txt_names_in_label_order(tmp_path):
    from ssd.data.yolo import read_yolo_names

    (tmp_path / "obj.names").write_text("ball\n\nplayer\n")
    assert read_yolo_names(tmp_path / "obj.names") == NAMES
