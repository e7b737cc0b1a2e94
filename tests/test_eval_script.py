"""scripts/eval.py end to end on a generated shapes data set with a freshly initialised SSD7."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd.config import load_config
from ssd.data import ensure_shapes
from ssd.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_SCRIPT = REPO_ROOT / "scripts" / "eval.py"


def _load_eval_module():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("eval_script", EVAL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_e2e")
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml", overrides=[
        f"data.root={root / 'data'}", "data.num_workers=0", "data.shapes.num_train=2",
        "data.shapes.num_test=6", "data.shapes.image_size=120", "data.shapes.seed=3"])
    ensure_shapes(root / "data", num_train=2, num_test=6, image_size=120, seed=3)
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = root / "fresh.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, weights)
    return root, weights


def _read_result_files(out_dir):
    rows = []
    for path in sorted(out_dir.glob("comp4_det_test_*.txt")):
        for line in path.read_text().splitlines():
            image_id, score, *box = line.split()
            rows.append((path.stem.replace("comp4_det_test_", ""), image_id, float(score),
                         [float(v) for v in box]))
    return rows


def test_eval_writes_every_output_and_honours_flags(setup, capsys):
    root, weights = setup
    out = root / "out"
    module = _load_eval_module()
    code = module.main(["--weights", str(weights), "--metric", "voc10", "--conf-threshold", "0.15",
                        "--nms-threshold", "0.3", "--top-k", "7", "--batch-size", "4",
                        "--device", "cpu", "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("circle", "square", "triangle", "star", "hexagon", "cross", "mAP"):
        assert name in printed
    summary = json.loads((out / "results.json").read_text())
    settings = summary["settings"]
    assert summary["metric"] == "voc10"
    assert (settings["conf_threshold"], settings["nms_threshold"], settings["top_k"],
            settings["batch_size"]) == (0.15, 0.3, 7, 4)
    assert settings["num_images"] == 6 and summary["timing"]["images"] == 6
    assert set(summary["ap"]) == {"circle", "square", "triangle", "star", "hexagon", "cross"}
    assert 0.0 <= summary["mAP"] <= 1.0
    assert (out / "pr_curves.png").stat().st_size > 1000
    rows = _read_result_files(out)
    assert len(list(out.glob("comp4_det_test_*.txt"))) == 6
    assert rows, "an untrained model still produces detections above 0.15"
    assert all(score > 0.15 for _, _, score, _ in rows)  # --conf-threshold honoured
    per_image = {}
    for _, image_id, _, _ in rows:
        per_image[image_id] = per_image.get(image_id, 0) + 1
    assert max(per_image.values()) <= 7  # --top-k honoured
    boxes = np.array([box for *_, box in rows])
    assert boxes.shape[1] == 4 and len(per_image) <= 6


def test_top_k_and_threshold_change_the_output(setup):
    root, weights = setup
    module = _load_eval_module()
    counts = []
    for top_k in ("3", "50"):
        out = root / f"out_k{top_k}"
        module.main(["--weights", str(weights), "--top-k", top_k, "--conf-threshold", "0.05",
                     "--device", "cpu", "--output", str(out), "--no-progress"])
        counts.append(len(_read_result_files(out)))
    assert counts[0] <= 3 * 6 < counts[1]


def _run_cli(*args):
    return subprocess.run([sys.executable, str(EVAL_SCRIPT), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = _run_cli("--weights", str(tmp_path / "nope.pth"))
    assert result.returncode == 2
    assert "nope.pth" in result.stderr and "Traceback" not in result.stderr


def test_weights_for_another_class_count_name_both_shapes(setup, tmp_path):
    root, _ = setup
    cfg21 = load_config(REPO_ROOT / "configs" / "shapes.yaml", overrides=[
        "model.num_classes=21", "data.class_names=null", f"data.root={root / 'data'}"])
    weights = tmp_path / "voc_classes.pth"
    torch.save(build_model(cfg21).state_dict(), weights)  # bare state_dict: no config inside
    result = _run_cli("--weights", str(weights), "--config", "configs/shapes.yaml")
    assert result.returncode == 2, result.stderr
    assert "conf.0.weight" in result.stderr and "21 classes" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_test_split_names_the_path(setup, tmp_path):
    _, weights = setup
    result = _run_cli("--weights", str(weights), "--opts", f"data.root={tmp_path}/missing",
                      "data.format=voc")
    assert result.returncode == 2
    assert str(tmp_path / "missing") in result.stderr and "Traceback" not in result.stderr
