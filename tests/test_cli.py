"""The commands: ssd-train, ssd-eval, ssd-predict, ssd-export, ssd-visualize, ssd-convert and
ssd-make-shapes as installed by a non-editable `pip install .` and run from a folder outside the
clone, how their --config values resolve, and how messages name them."""

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import ssd
from ssd.cli import convert as convert_cli
from ssd.cli import eval as eval_cli
from ssd.cli import export as export_cli
from ssd.cli import make_shapes as make_shapes_cli
from ssd.cli import predict as predict_cli
from ssd.cli import train as train_cli
from ssd.cli import visualize as visualize_cli
from ssd.cli.common import load_cli_config
from ssd.commands import clone_doc, clone_script, running_from_clone
from ssd.commands import command as command_here
from ssd.config import ConfigError, load_config
from ssd.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES_CLASSES = {"circle", "square", "triangle", "star", "hexagon", "cross"}
COMMAND_TIMEOUT_S = 300


def run_command(project, cwd: Path, command: str, *args: str) -> subprocess.CompletedProcess:
    """An installed command, run in `cwd` without the checkout on the import path."""
    return subprocess.run([str(project.bin / command), *args], cwd=cwd, capture_output=True,
                          text=True, env=project.env(), timeout=COMMAND_TIMEOUT_S)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working directory outside the clone."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------ installed commands
def test_installed_train_and_export_answer_help(installed_project, outside):
    for command, option in (("ssd-train", "--resume"), ("ssd-export", "--with-postprocess")):
        done = run_command(installed_project, outside, command, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: {command} ") and option in done.stdout


def test_installed_eval_prints_the_package_version(installed_project, outside):
    done = run_command(installed_project, outside, "ssd-eval", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ssd-eval {ssd.__version__}"


def test_installed_predict_reads_default_weights_and_a_builtin_config(installed_project, outside):
    """A classic state dict (no config inside) at the default weights/ssd300.pth of the working
    directory, and --config naming the packaged shapes.yaml: the detections carry its class
    names and the outputs land in out/ of the working directory."""
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml")
    torch.manual_seed(0)
    (outside / "weights").mkdir()
    torch.save(build_model(cfg).state_dict(), outside / "weights" / "ssd300.pth")
    image = np.full((90, 120, 3), 40, np.uint8)
    cv2.rectangle(image, (20, 20), (70, 60), (0, 200, 255), -1)
    cv2.imwrite(str(outside / "picture.jpg"), image)
    # An untrained model scores every class near 1/7: a low threshold keeps some detections.
    done = run_command(installed_project, outside, "ssd-predict", "picture.jpg", "--config",
                       "shapes.yaml", "--score-threshold", "0.01", "--top-k", "5", "--json",
                       "--device", "cpu", "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    document = json.loads((outside / "out" / "detections.json").read_text())
    assert document["settings"]["image_size"] == cfg.model.image_size
    found = document["images"]["picture.jpg"]["detections"]
    assert found and {d["class_name"] for d in found} <= SHAPES_CLASSES
    assert cv2.imread(str(outside / "out" / "picture_det.jpg")).shape == image.shape
    assert "picture.jpg (120x90)" in done.stdout


def test_installed_predict_without_weights_says_where_it_looked(installed_project, outside):
    cv2.imwrite(str(outside / "picture.jpg"), np.full((40, 60, 3), 90, np.uint8))
    done = run_command(installed_project, outside, "ssd-predict", "picture.jpg")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    # The hint names the installed command, not a clone's script or README.
    assert "`ssd-train --config configs/shapes.yaml`" in done.stderr
    assert "scripts/" not in done.stderr and "README" not in done.stderr


def test_installed_tools_answer_help_and_version(installed_project, outside):
    for command, option in (("ssd-visualize", "--annotation"), ("ssd-convert", "--class-names"),
                            ("ssd-make-shapes", "--num-train")):
        done = run_command(installed_project, outside, command, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: {command} ") and option in done.stdout
    done = run_command(installed_project, outside, "ssd-make-shapes", "--version")
    assert done.stdout.strip() == f"ssd-make-shapes {ssd.__version__}", done.stderr


# ---------------------------------------------------------------------------- in process
@pytest.mark.parametrize("module", [train_cli, eval_cli, predict_cli, export_cli, visualize_cli,
                                    convert_cli, make_shapes_cli],
                         ids=lambda module: module.__name__)
def test_every_command_prints_the_version(module, capsys):
    with pytest.raises(SystemExit) as info:
        module.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {ssd.__version__}")


def test_a_builtin_config_keeps_user_folders_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("shapes.yaml", "configs/shapes.yaml"):
        cfg = load_cli_config(name, overrides=["solver.max_iter=7"])
        assert cfg.data.root == str(tmp_path / "data" / "shapes")
        assert cfg.train.output_dir == str(tmp_path / "runs" / "shapes")
        assert cfg.solver.max_iter == 7 and cfg.model.backbone == "ssd7"


def test_a_config_file_in_the_working_directory_wins_over_the_builtin_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "shapes.yaml").write_text("model: {num_classes: 3}\ndata: {root: mine}\n")
    cfg = load_cli_config("configs/shapes.yaml")
    assert cfg.model.num_classes == 3 and cfg.data.root == str(tmp_path / "configs" / "mine")


def test_an_unknown_config_lists_the_builtin_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"Config file not found: nope\.yaml \(built-in configs: .*voc300"):
        load_cli_config("nope.yaml")
    with pytest.raises(ConfigError, match="Config file not found: elsewhere/shapes.yaml"):
        load_cli_config("elsewhere/shapes.yaml")  # a folder other than configs/: a user file


# ------------------------------------------------------------------------ command names
def test_messages_name_the_clone_scripts_in_a_clone():
    assert running_from_clone()  # the tests run from the checkout
    assert command_here("ssd-make-shapes") == "python scripts/make_shapes.py"
    assert command_here("ssd-export") == "python scripts/export_onnx.py"
    assert clone_doc("data/README.md") == "; see data/README.md"
    assert clone_script("convert_vgg.py", "a.pth b.pth") == "python scripts/convert_vgg.py a.pth b.pth"


def test_messages_name_the_installed_commands_outside_a_clone(tmp_path, monkeypatch):
    import ssd.commands

    monkeypatch.setattr(ssd.commands, "CLONE_SCRIPTS", tmp_path / "scripts")  # no scripts there
    assert not running_from_clone()
    assert command_here("ssd-make-shapes") == "ssd-make-shapes"
    assert clone_doc("data/README.md") == ""
    assert clone_script("convert_vgg.py").endswith("(a script of the project's source repository, "
                                                  "not an installed command)")
    with pytest.raises(KeyError, match="no command named 'ssd-nope'"):
        command_here("ssd-nope")
# ------------------------------------------------------------------------ option names
# (command module, arguments every call needs): one name per concept across the commands
OUTPUT_COMMANDS = [(train_cli, []), (eval_cli, ["--weights", "w.pth"]),
                   (predict_cli, ["image.jpg"]), (export_cli, ["--weights", "w.pth"])]
THRESHOLD_COMMANDS = [(eval_cli, ["--weights", "w.pth"]), (predict_cli, ["image.jpg"])]


@pytest.mark.parametrize("module, required", OUTPUT_COMMANDS)
def test_every_command_takes_output_and_the_old_out_spelling(module, required):
    new = module.parse_args([*required, "--output", "somewhere"])
    assert str(new.output) == "somewhere"
    if module is not train_cli:  # train always spelled it --output
        assert module.parse_args([*required, "--out", "somewhere"]) == new


@pytest.mark.parametrize("module, required", THRESHOLD_COMMANDS)
def test_score_threshold_and_the_old_conf_threshold_spelling(module, required):
    new = module.parse_args([*required, "--score-threshold", "0.3"])
    assert new.score_threshold == 0.3
    if module is eval_cli:  # eval spelled it --conf-threshold
        assert module.parse_args([*required, "--conf-threshold", "0.3"]) == new
        assert eval_cli.flag_overrides(new) == ["test.score_threshold=0.3"]


@pytest.mark.parametrize("module", [eval_cli, predict_cli, export_cli])
def test_help_marks_the_old_spellings(module, capsys):
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for old in ("--out", "--conf-threshold"):
        if f"{old} " in shown:
            assert f"{old} is the old spelling" in shown
