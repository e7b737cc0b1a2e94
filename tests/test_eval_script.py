"""ssd-eval (ssd/cli/eval.py, run from a clone as scripts/eval.py) end to end on a generated
shapes data set: in-process ``main([...])`` calls (one subprocess smoke test checks the real
command line)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_cuda

from ssd.cli import eval as eval_script
from ssd.cli.common import run_cli
from ssd.config import load_config
from ssd.data import BaseTransform, ensure_shapes
from ssd.loss import MultiBoxLoss
from ssd.modeling import build_model
from ssd.precision import default_precision

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_SCRIPT = REPO_ROOT / "scripts" / "eval.py"
SHAPES_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"  # SSD7 at 160 px
SHAPES = {"num_train": 2, "num_test": 8, "image_size": 160, "seed": 3}
CLASSES = ("circle", "square", "triangle", "star", "hexagon", "cross")
TRAIN_STEPS = 20  # Adam steps on the 8 test images: mAP about 0.75 there, not saturated

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(data_root, *overrides):
    shapes = [f"data.shapes.{key}={value}" for key, value in SHAPES.items()]
    return load_config(SHAPES_CONFIG, overrides=[f"data.root={data_root}", "data.num_workers=0",
                                                 *shapes, *overrides])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, shapes root, fresh SSD7 checkpoint, trained SSD7 checkpoint)."""
    root = tmp_path_factory.mktemp("eval_e2e")
    data_root = root / "data"
    ensure_shapes(data_root, **SHAPES)
    cfg = _config(data_root)
    torch.manual_seed(0)
    model = build_model(cfg)
    fresh = root / "fresh.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, fresh)
    trained = root / "trained.pth"
    torch.save({"model": _overfit(model, cfg, data_root).state_dict(), "config": cfg.to_dict()},
               trained)
    return root, data_root, fresh, trained


def _overfit(model, cfg, data_root):
    """The model trained (full batch, no augmentation) on the test images themselves, so that
    its detections there are confident and well placed and its mAP is high."""
    from ssd.data import VOCDataset

    dataset = VOCDataset(data_root, [("shapes", "test")], class_names=list(CLASSES), verbose=False)
    transform = BaseTransform(cfg.model.image_size, cfg.data.mean)
    samples = [dataset[i] for i in range(len(dataset))]
    # (S, S, 3) -> (3, S, S) per image, stacked to [8, 3, S, S]
    images = torch.stack([torch.from_numpy(transform(image)[0]).permute(2, 0, 1)
                          for image, _ in samples])
    targets = [torch.from_numpy(target) for _, target in samples]
    criterion = MultiBoxLoss(cfg.model.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(TRAIN_STEPS):
        losses = criterion(*model(images), model.priors, targets)
        optimizer.zero_grad()
        (losses["loss_loc"] + losses["loss_conf"]).backward()
        optimizer.step()
    return model.eval()


def _evaluate(weights, out, *flags, device="cpu"):
    """main([...]) in process; returns (exit status, results.json parsed strictly)."""
    code = eval_script.main(["--weights", str(weights), "--device", device, "--output", str(out),
                             "--no-progress", *flags])
    return code, _strict_json(out / "results.json")


def _strict_json(path):
    """Parse as strict JSON: NaN or Infinity in the file is an error."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _read_result_files(out_dir):
    rows = []
    for path in sorted(out_dir.glob("comp4_det_test_*.txt")):
        for line in path.read_text().splitlines():
            image_id, score, *box = line.split()
            rows.append((path.stem.replace("comp4_det_test_", ""), image_id, float(score),
                         [float(v) for v in box]))
    return rows


def _copy_data(data_root, destination):
    shutil.copytree(data_root, destination)
    return destination / "VOCshapes"


def _run_cli(args, capsys):
    """The script's command-line wrapper in process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: eval_script.main(args))
    return stopped.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------ outputs


def test_eval_writes_every_output_and_honours_flags(setup, capsys):
    root, _, fresh, _ = setup
    out = root / "out"
    code, summary = _evaluate(fresh, out, "--metric", "voc10", "--conf-threshold", "0.15",
                              "--nms-threshold", "0.3", "--top-k", "7", "--batch-size", "4")
    assert code == 0
    printed = capsys.readouterr().out
    for name in (*CLASSES, "mAP"):
        assert name in printed
    assert re.search(r"8 images in [\d.]+ s: [\d.]+ images/s \(fp32, cpu\)", printed)
    settings = summary["settings"]
    assert summary["metric"] == "voc10"
    assert (settings["score_threshold"], settings["nms_threshold"], settings["top_k"],
            settings["batch_size"], settings["precision"]) == (0.15, 0.3, 7, 4, "fp32")
    assert settings["num_images"] == 8 and summary["timing"]["images"] == 8
    assert set(summary["ap"]) == set(CLASSES) and summary["skipped"] == []
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


def test_top_k_and_threshold_change_the_output(setup):
    root, _, fresh, _ = setup
    counts = []
    for top_k in ("3", "50"):
        out = root / f"out_k{top_k}"
        _evaluate(fresh, out, "--top-k", top_k, "--conf-threshold", "0.05")
        counts.append(len(_read_result_files(out)))
    assert counts[0] <= 3 * 8 < counts[1]


def test_outputs_are_ordinary_files_under_umask_022(setup):
    """results.json, the pictures and the VOC results files: mode 0644, no temp files left."""
    root, _, _, trained = setup
    out = root / "out_modes"
    previous = os.umask(0o022)
    try:
        code, _ = _evaluate(trained, out)
    finally:
        os.umask(previous)
    assert code == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted(["results.json", "pr_curves.png", "confusion_matrix.png",
                              "confusion_matrix.json", "thresholds.png",
                              *(f"comp4_det_test_{name}.txt" for name in CLASSES)])
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path.name


# --------------------------------------------------------------------------- precision


def test_bf16_map_is_within_bound_of_fp32(setup):
    """The fast path (bf16 autocast) scores almost the same as the fp32 reference.

    Bound: bf16 keeps 8 significant bits, so each rounding changes a value by at most 2^-9
    relative; through the model's few layers that stays around 1% of a logit or box offset.
    A detection changes outcome only where this moves its IoU across 0.5 or its score past a
    neighbour's; on a model whose detections are confident and well placed (fp32 mAP checked
    above 0.5 here) such detections are rare. One changed outcome moves a class's AP by at
    most about 1 / (its ground-truth count): with 8 images of 1-4 objects over 6 classes that
    could be large for one class, but the mean over 6 classes of a couple of flips stays well
    under 0.05, which is the bound tested. "auto" resolves to the device's default precision.
    """
    root, _, _, trained = setup
    code32, fp32 = _evaluate(trained, root / "out_fp32")
    code16, bf16 = _evaluate(trained, root / "out_bf16", "--precision", "bf16")
    assert code32 == code16 == 0
    assert fp32["settings"]["precision"] == "fp32" and bf16["settings"]["precision"] == "bf16"
    assert fp32["mAP"] > 0.5, "the overfitted model should find most objects"
    assert abs(fp32["mAP"] - bf16["mAP"]) <= 0.05
    _, auto = _evaluate(trained, root / "out_auto", "--precision", "auto")
    assert auto["settings"]["precision"] == default_precision("cpu")


@needs_cuda
def test_cuda_maps_are_within_bound_of_the_cpu_fp32_map(setup):
    """On CUDA, "fp32" convolutions may round their inputs to TF32 (PyTorch's default for
    cuDNN), which keeps 11 significant bits, and fp16 keeps 11 too: both are finer than bf16,
    so the bf16 bound above (0.05 of mAP) holds for them a fortiori."""
    root, _, _, trained = setup
    _, cpu = _evaluate(trained, root / "out_cpu_fp32")
    code32, cuda32 = _evaluate(trained, root / "out_cuda_fp32", device="cuda")
    code16, cuda16 = _evaluate(trained, root / "out_cuda_fp16", "--precision", "auto", device="cuda")
    assert code32 == code16 == 0
    assert cuda32["settings"]["precision"] == "fp32" and cuda16["settings"]["precision"] == "fp16"
    assert cpu["mAP"] > 0.5
    assert abs(cuda32["mAP"] - cpu["mAP"]) <= 0.05 and abs(cuda16["mAP"] - cpu["mAP"]) <= 0.05


# ------------------------------------------------------------------ skipped and empty data


def test_unreadable_image_is_left_out_of_the_evaluation(setup, tmp_path, capsys):
    """With data.skip_bad, a garbage test JPEG leaves the evaluation entirely: the mAP equals
    the mAP of the same set whose split file does not list that image, and the summary names
    the file."""
    _, data_root, _, trained = setup
    broken = _copy_data(data_root, tmp_path / "broken")
    image_ids = (broken / "ImageSets" / "Main" / "test.txt").read_text().split()
    garbage = broken / "JPEGImages" / f"{image_ids[0]}.jpg"
    garbage.write_bytes(b"not a jpeg at all")
    without = _copy_data(data_root, tmp_path / "without")
    (without / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in image_ids[1:]))
    capsys.readouterr()

    code, skipped = _evaluate(trained, tmp_path / "out_skip", "--opts",
                              f"data.root={tmp_path / 'broken'}", "data.skip_bad=true")
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped 1 file" in printed and str(garbage) in printed
    assert [entry["path"] for entry in skipped["skipped"]] == [str(garbage)]
    assert skipped["settings"]["num_images"] == 7 and skipped["settings"]["num_images_listed"] == 8

    code, reference = _evaluate(trained, tmp_path / "out_ref", "--opts",
                                f"data.root={tmp_path / 'without'}")
    assert code == 0 and reference["settings"]["num_images"] == 7
    assert skipped["mAP"] == pytest.approx(reference["mAP"], abs=1e-12)
    assert skipped["ap"] == pytest.approx(reference["ap"], abs=1e-12)


def test_all_difficult_test_set_gives_null_metrics(setup, tmp_path, capsys):
    """No countable ground truth: every AP and the mAP are null in strict JSON, the table says
    why, and the exit status is 1."""
    _, data_root, _, trained = setup
    voc = _copy_data(data_root, tmp_path / "data")
    for xml in (voc / "Annotations").glob("*.xml"):
        xml.write_text(re.sub(r"<difficult>0</difficult>", "<difficult>1</difficult>",
                              xml.read_text()))
    capsys.readouterr()
    code, summary = _evaluate(trained, tmp_path / "out", "--opts", f"data.root={tmp_path / 'data'}")
    printed = capsys.readouterr().out
    assert code == eval_script.EXIT_NO_MAP == 1
    assert summary["mAP"] is None
    assert summary["ap"] == {name: None for name in CLASSES}
    assert sorted(summary["excluded"]) == sorted(CLASSES)
    assert printed.count("n/a (no ground truth)") == len(CLASSES)
    assert "mAP  n/a" in printed and "no class has countable ground truth" in printed
    assert (tmp_path / "out" / "pr_curves.png").is_file()


def test_empty_test_split_is_an_error_naming_the_file(setup, tmp_path, capsys):
    _, data_root, _, trained = setup
    split = _copy_data(data_root, tmp_path / "data") / "ImageSets" / "Main" / "test.txt"
    split.write_text("")
    code, err = _run_cli(["--weights", str(trained), "--device", "cpu", "--no-progress",
                          "--output", str(tmp_path / "out"), "--opts",
                          f"data.root={tmp_path / 'data'}"], capsys)
    assert code == 2
    assert err.startswith("error: ") and str(split) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_metric_json_helpers_write_no_nan():
    summary = {"mAP": math.nan, "ap": {"a": 0.5, "b": math.nan}, "timing": [math.inf, 1.0]}
    cleaned = eval_script._finite_or_null(summary)
    assert cleaned == {"mAP": None, "ap": {"a": 0.5, "b": None}, "timing": [None, 1.0]}
    assert math.isnan(eval_script._coco_stats({"AP": -1.0, "AP50": 0.3, "per_class": {}})["AP"])


# --------------------------------------------------------------------------- bad input


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code, err = _run_cli(["--weights", str(tmp_path / "nope.pth")], capsys)
    assert code == 2
    assert "nope.pth" in err and "Traceback" not in err


def test_weights_for_another_class_count_name_both_shapes(setup, tmp_path, capsys):
    _, data_root, _, _ = setup
    cfg21 = load_config(REPO_ROOT / "configs" / "shapes.yaml", overrides=[
        "model.num_classes=21", "data.class_names=null", f"data.root={data_root}"])
    weights = tmp_path / "voc_classes.pth"
    torch.save(build_model(cfg21).state_dict(), weights)  # bare state_dict: no config inside
    code, err = _run_cli(["--weights", str(weights), "--config", str(REPO_ROOT / "configs" /
                                                                      "shapes.yaml")], capsys)
    assert code == 2, err
    assert "conf.0.weight" in err and "21 classes" in err


def test_missing_test_split_names_the_path(setup, tmp_path, capsys):
    _, _, fresh, _ = setup
    code, err = _run_cli(["--weights", str(fresh), "--opts", f"data.root={tmp_path}/missing",
                          "data.format=voc"], capsys)
    assert code == 2
    assert str(tmp_path / "missing") in err


def test_command_line_smoke(setup, tmp_path):
    """The real command: a run in its own process exits 0 and writes results.json; bad input
    exits 2 with one error line and no traceback."""
    _, _, fresh, _ = setup
    done = subprocess.run([sys.executable, str(EVAL_SCRIPT), "--weights", str(fresh), "--device",
                           "cpu", "--output", str(tmp_path / "out"), "--no-progress"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "images/s" in done.stdout and _strict_json(tmp_path / "out" / "results.json")["mAP"] >= 0


# ------------------------------------------------------------------------ output folders
def test_two_best_checkpoints_of_two_runs_get_two_default_folders(setup, tmp_path, monkeypatch):
    """runs/a/best.pth and runs/b/best.pth: each evaluation lands in its own eval/<run>_best."""
    root, _, fresh, trained = setup
    for run, weights in (("a", fresh), ("b", trained)):
        (tmp_path / "runs" / run).mkdir(parents=True)
        shutil.copy(weights, tmp_path / "runs" / run / "best.pth")
    monkeypatch.chdir(tmp_path)
    for run in ("a", "b"):
        assert eval_script.main(["--weights", f"runs/{run}/best.pth", "--device", "cpu",
                                 "--no-progress"]) == 0
    first = _strict_json(tmp_path / "eval" / "a_best" / "results.json")
    second = _strict_json(tmp_path / "eval" / "b_best" / "results.json")
    assert first["weights"] == "runs/a/best.pth" and second["weights"] == "runs/b/best.pth"
    assert first["mAP"] != second["mAP"]  # the fresh and the trained model


def test_an_earlier_evaluation_is_refused_then_replaced_with_overwrite(setup, tmp_path, capsys):
    """A second evaluation into the same folder: exit status 2 naming the folder, --output and
    --overwrite, the earlier results untouched; with --overwrite they are replaced."""
    _, _, fresh, trained = setup
    out = tmp_path / "out"
    _evaluate(fresh, out)
    earlier = (out / "results.json").read_text()
    capsys.readouterr()
    code, err = _run_cli(["--weights", str(trained), "--device", "cpu", "--output", str(out),
                          "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {out} holds an earlier evaluation (")
    assert "--output DIR" in err and "--overwrite" in err
    assert (out / "results.json").read_text() == earlier
    code, replaced = _evaluate(trained, out, "--overwrite")
    assert code == 0 and replaced["weights"] == str(trained)
    assert replaced["mAP"] > json.loads(earlier)["mAP"]


# ------------------------------------------------------------------------ --config: transfer
def _voc_copy(data_root, destination, keep=CLASSES):
    """The shapes test set as a plain VOC folder holding only the objects of `keep`."""
    voc = _copy_data(data_root, destination)
    pattern = re.compile(r"<object>.*?<name>(.*?)</name>.*?</object>\s*", re.S)
    for xml in (voc / "Annotations").glob("*.xml"):
        text = pattern.sub(lambda found: found.group(0) if found.group(1) in keep else "",
                           xml.read_text())
        xml.write_text(text)
    return ["--config", str(SHAPES_CONFIG), "--opts", "data.format=voc", f"data.root={destination}",
            'data.test_sets=[["shapes", "test"]]', f"data.class_names={json.dumps(list(keep))}",
            f"model.num_classes={len(keep) + 1}"]


def test_config_with_a_permuted_class_list_evaluates_through_the_transfer(setup, tmp_path, caplog):
    """--config naming the classes in another order: the per-class APs are those of the
    checkpoint's own config (the heads' rows are reordered by name), in --config's order, and
    the log names the config used."""
    _, data_root, _, trained = setup
    _, reference = _evaluate(trained, tmp_path / "reference")
    permuted = list(reversed(CLASSES))
    flags = _voc_copy(data_root, tmp_path / "data", keep=permuted)
    with caplog.at_level("INFO"):
        code, summary = _evaluate(trained, tmp_path / "out", *flags)
    assert code == 0
    assert list(summary["ap"]) == permuted
    assert summary["ap"] == pytest.approx(reference["ap"], abs=1e-6)
    config_lines = [r.message for r in caplog.records if r.message.startswith("Config: ")]
    assert len(config_lines) == 1 and str(SHAPES_CONFIG) in config_lines[0]
    assert "transferred to these classes by name" in config_lines[0]


def test_config_with_fewer_classes_is_scored_on_those_classes(setup, tmp_path, caplog):
    """--config with 3 of the checkpoint's 6 classes (a data set holding only those): the model
    gets their heads' rows, and results.json scores exactly those 3."""
    _, data_root, _, trained = setup
    kept = ["triangle", "circle", "star"]
    flags = _voc_copy(data_root, tmp_path / "data", keep=kept)
    with caplog.at_level("INFO"):
        code, summary = _evaluate(trained, tmp_path / "out", *flags)
    assert code == 0
    assert list(summary["ap"]) == kept and summary["mAP"] > 0.1
    assert "copied classes: triangle, circle, star" in caplog.text
