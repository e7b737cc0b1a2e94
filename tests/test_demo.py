"""scripts/demo.py end to end at toy size: every step runs, and every file the demo writes (data
set, checkpoints, evaluation, drawings) is whole and has ordinary permissions."""

import os
from pathlib import Path

import pytest
from conftest import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.shapes.num_train=6", "data.shapes.num_test=3", "data.shapes.image_size=160",
        "data.num_workers=0", "solver.max_iter=2", "solver.warmup_iters=0", "solver.batch_size=3",
        "test.batch_size=3", "train.eval_period=0"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo on 6 training images for 2 iterations, under umask 022."""
    folder = tmp_path_factory.mktemp("demo")
    opts = [f"data.root={folder / 'shapes'}", f"train.output_dir={folder / 'run'}", *TINY]
    previous = os.umask(0o022)
    try:
        code = load_script("demo").main(["--config", str(REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"),
                                         "--out", str(folder / "out"), "--opts", *opts])
    finally:
        os.umask(previous)
    return code, folder


def test_demo_runs_every_step(demo_run):
    code, folder = demo_run
    assert code == 0
    assert (folder / "out" / "eval" / "results.json").is_file()
    assert len(list((folder / "out").glob("*_det.jpg"))) == 1  # the first test image, drawn
    assert list((folder / "run").glob("*.pth"))


def test_everything_the_demo_writes_is_0644(demo_run):
    _, folder = demo_run
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 10
    wrong = {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in files
             if p.stat().st_mode & 0o777 != 0o644}
    assert not wrong
    assert not [p for p in files if p.name.endswith(".tmp")]  # nothing half-written


def test_demo_stops_at_a_failed_step(tmp_path, capsys):
    """Training fails (no VOC data under data.root): the demo stops there with status 1."""
    code = load_script("demo").main(["--config", str(REPO_ROOT / "configs" / "voc300.yaml"),
                                     "--out", str(tmp_path / "out"),
                                     "--opts", f"data.root={tmp_path / 'no_voc'}",
                                     f"train.output_dir={tmp_path / 'run'}"])
    assert code == 1
    assert "demo stopped: 'scripts/train.py" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_bad_override_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nonsense"):
        load_script("demo").main(["--out", str(tmp_path), "--opts", "solver.optimizer=nonsense"])
