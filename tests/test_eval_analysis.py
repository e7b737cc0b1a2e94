"""The evaluation analysis (ssd/evaluation/analysis.py, report.py): the confusion matrix of a
constructed case, the best-F1 threshold against a brute-force search, the pictures ssd-eval
and a training run write, the first-batch picture, and ssd-predict --score-threshold auto."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from trainer_helpers import train_argv, train_main

from ssd.cli import eval as eval_script
from ssd.cli.predict import DEFAULT_SCORE_THRESHOLD, resolve_score_threshold
from ssd.config import load_config
from ssd.data import ensure_shapes
from ssd.engine import checkpoint as ckpt
from ssd.evaluation import voc_evaluate
from ssd.evaluation.analysis import confusion_matrix, threshold_sweep, worst_images
from ssd.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SSD7_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"
SHAPES = {"num_train": 2, "num_test": 4, "image_size": 96, "seed": 5}
CLASSES = ["a", "b", "c"]
BACKGROUND = len(CLASSES)
ANALYSIS_FILES = ("results.json", "confusion_matrix.png", "confusion_matrix.json",
                  "thresholds.png", "pr_curves.png")

pytestmark = pytest.mark.usefixtures("one_thread")


def _record(boxes, labels, scores=None, difficult=None):
    record = {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
              "labels": np.array(labels, dtype=np.int64)}
    if scores is not None:
        record["scores"] = np.array(scores, dtype=np.float64)
    if difficult is not None:
        record["difficult"] = np.array(difficult, dtype=bool)
    return record


# ------------------------------------------------------------------------ confusion matrix
def test_confusion_matrix_cells_of_a_constructed_case():
    a, b, c = [10, 10, 50, 50], [100, 100, 150, 150], [200, 10, 250, 60]
    gt = {
        "img1": _record([a, b, c], [0, 1, 2]),
        "img2": _record([[20, 20, 80, 80]], [1], difficult=[True]),
    }
    dets = {
        "img1": _record(
            [a,                   # correct: a -> a
             [12, 11, 51, 50],    # duplicate of the same object: background -> a
             b,                   # wrong class on b: b -> c
             [300, 300, 340, 340],  # nothing there: background -> b
             c],                  # below the threshold: c is missed, c -> background
            [0, 0, 2, 1, 2], scores=[0.9, 0.8, 0.7, 0.6, 0.1]),
        "img2": _record([[20, 20, 80, 80]], [1], scores=[0.95]),  # on a difficult object: ignored
    }
    matrix, per_image = confusion_matrix(gt, dets, CLASSES, score_threshold=0.5)

    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1
    expected[BACKGROUND, 0] = 1
    expected[1, 2] = 1
    expected[BACKGROUND, 1] = 1
    expected[2, BACKGROUND] = 1
    np.testing.assert_array_equal(matrix["counts"], expected)
    assert matrix["classes"] == [*CLASSES, "background"]
    assert matrix["normalised"][BACKGROUND] == [0.5, 0.5, 0.0, 0.0]
    assert matrix["normalised"][0] == [1.0, 0.0, 0.0, 0.0]
    assert worst_images(per_image) == [{"image_id": "img1", "false_positives": 2, "missed": 1,
                                        "wrong_class": 1, "errors": 4}]

    lower, _ = confusion_matrix(gt, dets, CLASSES, score_threshold=0.05)  # c found now
    assert lower["counts"][2][2] == 1 and lower["counts"][2][BACKGROUND] == 0


# --------------------------------------------------------------------- best-F1 threshold
def _scored_case(seed=0):
    """Ground truth on a grid and detections whose kind is known by construction: exact boxes
    (the first on an object is a true positive, a second one a duplicate) and boxes in empty
    space (false positives). Returns (gt, dets, scores [D], true positive [D], number of gt)."""
    rng = np.random.default_rng(seed)
    gt, dets, all_scores, all_tp = {}, {}, [], []
    for image in range(6):
        boxes = [[40 * i, 0, 40 * i + 30, 30] for i in range(5)]
        labels = rng.integers(0, len(CLASSES), size=len(boxes))
        gt[f"im{image}"] = _record(boxes, labels)
        found_boxes, found_labels, found_scores, found_tp = [], [], [], []
        for box, label in zip(boxes, labels):
            if rng.random() < 0.7:
                copies = 2 if rng.random() < 0.3 else 1
                scores = sorted(np.round(rng.random(copies), 2), reverse=True)
                for rank, score in enumerate(scores):
                    found_boxes.append(box)
                    found_labels.append(label)
                    found_scores.append(score)
                    found_tp.append(rank == 0 and (copies == 1 or scores[0] > scores[1]))
        for _ in range(rng.integers(0, 4)):
            found_boxes.append([0, 500, 30, 530])  # below every object
            found_labels.append(rng.integers(0, len(CLASSES)))
            found_scores.append(np.round(rng.random(), 2))
            found_tp.append(False)
        dets[f"im{image}"] = _record(found_boxes, found_labels, scores=found_scores)
        all_scores += found_scores
        all_tp += found_tp
    num_gt = sum(len(record["labels"]) for record in gt.values())
    return gt, dets, np.array(all_scores), np.array(all_tp), num_gt


def _brute_force_best_f1(scores, true_pos, num_gt):
    best = (-1.0, None)
    for threshold in sorted(set(scores.tolist()), reverse=True):  # ties: the highest threshold
        kept = scores >= threshold
        tp = true_pos[kept].sum()
        precision, recall = tp / kept.sum(), tp / num_gt
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        if f1 > best[0]:
            best = (f1, threshold)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_f1_threshold_equals_a_brute_force_search(seed):
    gt, dets, scores, true_pos, num_gt = _scored_case(seed)
    sweep = threshold_sweep(voc_evaluate(gt, dets, CLASSES))
    f1, threshold = _brute_force_best_f1(scores, true_pos, num_gt)
    assert sweep["best_f1"]["threshold"] == pytest.approx(threshold)
    assert sweep["best_f1"]["f1"] == pytest.approx(f1)
    at_grid = sweep["thresholds"].index(0.5)
    kept = scores >= 0.5
    assert sweep["overall"]["recall"][at_grid] == pytest.approx(true_pos[kept].sum() / num_gt,
                                                                abs=1e-4)


# ------------------------------------------------------------------ outputs of the commands
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    data_root = root / "data"
    ensure_shapes(data_root, **SHAPES)
    shapes = [f"data.shapes.{key}={value}" for key, value in SHAPES.items()]
    cfg = load_config(SSD7_CONFIG, overrides=[f"data.root={data_root}", "data.num_workers=0",
                                              *shapes])
    torch.manual_seed(0)
    weights = root / "fresh.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, weights)
    return weights


def _is_picture(path):
    image = cv2.imread(str(path))
    return image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_ssd_eval_writes_the_analysis(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    eval_script.main(["--weights", str(tiny_checkpoint), "--device", "cpu", "--output", str(out),
                      "--no-progress"])
    for name in ANALYSIS_FILES:
        assert (out / name).is_file(), name
    assert all(_is_picture(out / name) for name in ANALYSIS_FILES if name.endswith(".png"))
    results = json.loads((out / "results.json").read_text())
    matrix = json.loads((out / "confusion_matrix.json").read_text())
    assert results["confusion_matrix"] == matrix
    assert len(matrix["counts"]) == len(results["ap"]) + 1
    assert {"threshold", "f1", "precision", "recall"} <= set(results["best_f1"])
    assert len(results["thresholds"]["overall"]["f1"]) == len(results["thresholds"]["thresholds"])
    printed = capsys.readouterr().out
    assert "best F1" in printed
    for row in results["worst_images"]:
        assert row["image_id"] in printed


def test_training_draws_its_first_batch_and_evaluations_write_the_analysis(tmp_path):
    out = tmp_path / "run"
    code = train_main()(train_argv(tmp_path / "data", out, **{"train.eval_period": 6}))
    assert code == 0
    batch = cv2.imread(str(out / "train_batch0.jpg"))
    assert batch is not None and batch.shape[0] > 96 * 2  # 4 images of 96 px in a 2 x 2 grid
    for name in ANALYSIS_FILES:
        assert (out / ckpt.EVAL_DIR / name).is_file(), name
    results = json.loads((out / ckpt.EVAL_DIR / "results.json").read_text())
    assert results["iteration"] == 6
    state = ckpt.load_checkpoint(out / ckpt.BEST_NAME)  # saved by that evaluation
    assert state["score_threshold"] == results["best_f1"]["threshold"] is not None


def test_score_threshold_auto_reads_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    state = torch.load(tiny_checkpoint, weights_only=True)
    stored = tmp_path / "evaluated.pth"
    torch.save({**state, "score_threshold": 0.37}, stored)
    assert resolve_score_threshold("auto", stored) == pytest.approx(0.37)
    assert resolve_score_threshold(0.2, stored) == pytest.approx(0.2)
    assert resolve_score_threshold("auto", tiny_checkpoint) == DEFAULT_SCORE_THRESHOLD
    assert "stores no score threshold" in capsys.readouterr().err
