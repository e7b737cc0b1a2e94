"""Resuming and output folders: no pickled code runs, damaged checkpoints are named or skipped,
another run's files are never changed, stale temporaries are cleaned up."""

import logging
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from trainer_helpers import tiny_cfg, train_argv, train_main

from ssd.engine import checkpoint as ckpt
from ssd.engine.trainer import OutputFolderError, Trainer
from ssd.modeling import build_model


class WritesAFile:
    """Pickles as a call of open(path, "w"): unpickling it creates `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A 3-iteration run: model_0000003.pth and metrics.jsonl."""
    folder = tmp_path_factory.mktemp("run")
    Trainer.from_config(tiny_cfg(data_root, **{"solver.max_iter": 3}), output_dir=folder, device="cpu",
                        progress=False).train()
    return folder


def copy_run(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    return folder


def snapshot(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_resume_auto_refuses_pickled_code_and_names_the_file(data_root, tmp_path, capsys):
    folder, marker = tmp_path / "run", tmp_path / "created_by_unpickling"
    folder.mkdir()
    evil = ckpt.checkpoint_path(folder, 10)
    torch.save({"model": {}, "iteration": 10, "payload": WritesAFile(marker)}, evil)

    with pytest.raises(ckpt.CheckpointError, match="model_0000010.pth.*pickled"):
        Trainer.from_config(tiny_cfg(data_root), output_dir=folder, device="cpu", resume="auto",
                            progress=False)
    assert not marker.exists()

    code = train_main()(train_argv(data_root, folder, "--resume", "auto"))
    stderr = capsys.readouterr().err
    assert code == 2
    last_line = stderr.strip().splitlines()[-1]  # after the data set's progress bar
    assert last_line.startswith("error: ") and str(evil) in last_line and "Traceback" not in stderr
    assert not marker.exists()
    with zipfile.ZipFile(evil) as archive:  # the payload is real: plain unpickling creates the file
        pickle.loads(archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl"))))
    assert marker.exists()


def _other_model_checkpoint(data_root, path, **model_overrides):
    cfg = tiny_cfg(data_root, **model_overrides)
    state = {"model": build_model(cfg).state_dict(), "iteration": 3, "config": cfg.to_dict()}
    torch.save(state, path)


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "truncated or not a .pth file"),
    ("random_bytes", "not a PyTorch weights file"),
    ("other_architecture", "differ in shape"),
    ("other_class_count", "4 classes"),
])
def test_resume_from_a_damaged_file_is_one_clear_line(data_root, finished_run, tmp_path, capsys,
                                                      damage, expected):
    path = tmp_path / "given.pth"
    good = ckpt.checkpoint_path(finished_run, 3).read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    elif damage == "other_architecture":
        _other_model_checkpoint(data_root, path, **{"model.channels": [16] * 7})
    else:
        _other_model_checkpoint(data_root, path, **{"model.num_classes": 4,
                                                    "data.class_names": ["a", "b", "c"]})
    code = train_main()(train_argv(data_root, tmp_path / "out", "--resume", str(path)))
    stderr = capsys.readouterr().err
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(path) in lines[0] and expected in lines[0]


def test_resume_auto_skips_a_damaged_newest_checkpoint(data_root, finished_run, tmp_path, caplog):
    folder = copy_run(finished_run, tmp_path)
    good = ckpt.checkpoint_path(folder, 3).read_bytes()
    damaged = ckpt.checkpoint_path(folder, 6)
    damaged.write_bytes(good[: len(good) // 3])  # killed while copying, say
    with caplog.at_level(logging.WARNING, logger="ssd.engine.checkpoint"):
        trainer = Trainer.from_config(tiny_cfg(data_root), output_dir=folder, device="cpu",
                                      resume="auto", progress=False)
    assert trainer.iteration == 3 and trainer.resumed_from == ckpt.checkpoint_path(folder, 3)
    assert "skipping a damaged checkpoint" in caplog.text and str(damaged) in caplog.text


def test_new_run_never_touches_another_runs_files(data_root, finished_run, tmp_path, capsys):
    folder = copy_run(finished_run, tmp_path)
    (folder / ckpt.BEST_NAME).write_bytes(ckpt.checkpoint_path(folder, 3).read_bytes())
    before = snapshot(folder)
    # keep_checkpoints=1 with a checkpoint every iteration would prune the old run's files.
    pruning = {"train.checkpoint_period": 1, "train.keep_checkpoints": 1}
    code = train_main()(train_argv(data_root, folder, **pruning))
    stderr = capsys.readouterr().err
    assert code == 2
    assert "--resume auto" in stderr and "--output" in stderr and "--overwrite" in stderr
    assert snapshot(folder) == before
    # Continuing a checkpoint of some other folder into this one is refused the same way.
    elsewhere = tmp_path / "elsewhere.pth"
    shutil.copy(ckpt.checkpoint_path(folder, 3), elsewhere)
    with pytest.raises(OutputFolderError, match="holds another run"):
        Trainer.from_config(tiny_cfg(data_root, **pruning), output_dir=folder, device="cpu",
                            resume=elsewhere, progress=False)
    assert snapshot(folder) == before


def test_overwrite_deletes_the_old_run_first_and_says_so(data_root, finished_run, tmp_path, caplog):
    folder = copy_run(finished_run, tmp_path)
    old_only = ckpt.checkpoint_path(folder, 99)
    shutil.copy(ckpt.checkpoint_path(folder, 3), old_only)
    with caplog.at_level(logging.INFO, logger="ssd.engine.output_dir"):
        trainer = Trainer.from_config(tiny_cfg(data_root, **{"solver.max_iter": 1}), output_dir=folder,
                                      device="cpu", overwrite=True, progress=False)
    assert "deleted the previous run" in caplog.text and old_only.name in caplog.text
    assert not old_only.exists() and not (folder / "metrics.jsonl").exists()
    trainer.train()
    assert [it for it, _ in ckpt.list_checkpoints(folder)] == [1]


def test_stale_temporaries_are_removed_on_start(data_root, finished_run, tmp_path, caplog):
    folder = copy_run(finished_run, tmp_path)
    stale = folder / ".model_0000006.pth.k3j_x9.tmp"  # a write killed by kill -9
    stale.write_bytes(b"half a checkpoint")
    unrelated = folder / "notes.tmp"
    unrelated.write_text("not ours")
    with caplog.at_level(logging.INFO, logger="ssd.engine.output_dir"):
        Trainer.from_config(tiny_cfg(data_root), output_dir=folder, device="cpu", resume="auto",
                            progress=False)
    assert not stale.exists() and unrelated.exists()
    assert "temporary file" in caplog.text and stale.name in caplog.text


def test_checkpoints_are_plain_data_and_old_numpy_states_still_resume(data_root, finished_run, tmp_path):
    state = torch.load(ckpt.checkpoint_path(finished_run, 3), weights_only=True)  # no numpy allowed
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    folder = tmp_path / "old"
    np.random.seed(5)
    state["rng"]["numpy"] = np.random.get_state()  # how older checkpoints stored it
    expected = np.random.random()
    folder.mkdir()
    torch.save(state, ckpt.checkpoint_path(folder, 3))
    Trainer.from_config(tiny_cfg(data_root), output_dir=folder, device="cpu", resume="auto", progress=False)
    assert np.random.random() == expected
