"""One training run per output folder: run.lock refuses a second live run, a lock left by a
dead run is taken over, the lock is gone when training ends (also on errors)."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from trainer_helpers import REPO_ROOT, TRAIN_SCRIPT, tiny_cfg, train_argv, train_main

from ssd.data import build_dataset
from ssd.engine import checkpoint as ckpt
from ssd.engine.metrics_log import read_metrics
from ssd.engine.run_lock import LOCK_NAME, FolderInUseError, RunLock
from ssd.engine.trainer import Trainer

# Iterations of the two racing runs: long enough that the winner still trains when the other
# one, started at the same moment, reaches the lock.
RACE_ITERS = 6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The tiny shapes data set, generated once (racing processes only read it)."""
    root = tmp_path_factory.mktemp("shapes")
    build_dataset(tiny_cfg(root), train=True)
    return root


def dead_pid() -> int:
    """The process id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_lock_is_refused_naming_the_holder_until_released(tmp_path):
    lock = RunLock.acquire(tmp_path / "run")
    holder = json.loads(lock.path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(FolderInUseError) as refused:
        RunLock.acquire(tmp_path / "run")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'run'} is in use by another training run")
    assert f"pid {os.getpid()} on host {socket.gethostname()}, started {holder['started']}" in message
    lock.release()
    assert not lock.path.exists()
    RunLock.acquire(tmp_path / "run").release()  # free again


def test_two_runs_started_together_into_one_folder(data_root, tmp_path):
    folder = tmp_path / "run"
    argv = train_argv(data_root, folder, **{"solver.max_iter": RACE_ITERS})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *argv], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], [err[-2000:] for _, err in outputs]
    winner, loser = (runs[0], runs[1]) if codes[0] == 0 else (runs[1], runs[0])
    error = outputs[runs.index(loser)][1].strip().splitlines()[-1]
    assert error.startswith(f"error: {folder} is in use by another training run (pid {winner.pid} "
                            f"on host {socket.gethostname()}, started ")
    iterations = [r["iteration"] for r in read_metrics(folder / "metrics.jsonl") if r["kind"] == "train"]
    assert iterations == list(range(1, RACE_ITERS + 1))  # one run's records only
    assert not (folder / LOCK_NAME).exists()


def test_a_lock_left_by_a_dead_run_is_taken_over_on_resume(data_root, tmp_path, caplog, one_thread):
    folder = tmp_path / "run"
    Trainer.from_config(tiny_cfg(data_root, **{"solver.max_iter": 3}), output_dir=folder,
                        device="cpu", progress=False).train()
    pid = dead_pid()  # as if killed with kill -9 after its checkpoint: run.lock stays behind
    stale = {"pid": pid, "host": socket.gethostname(), "started": "2025-01-31T09:12:03+00:00"}
    (folder / LOCK_NAME).write_text(json.dumps(stale) + "\n")
    with caplog.at_level(logging.WARNING, logger="ssd.engine.run_lock"):
        trainer = Trainer.from_config(tiny_cfg(data_root, **{"solver.max_iter": 4}), output_dir=folder,
                                      device="cpu", resume="auto", progress=False)
    assert "Took over the lock" in caplog.text and f"pid {pid} on host" in caplog.text
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    trainer.train()
    assert trainer.iteration == 4 and not (folder / LOCK_NAME).exists()


def test_resume_into_the_folder_of_a_finished_run(data_root, tmp_path, capsys, one_thread):
    folder = tmp_path / "run"
    assert train_main()(train_argv(data_root, folder, **{"solver.max_iter": 3})) == 0
    assert not (folder / LOCK_NAME).exists()
    code = train_main()(train_argv(data_root, folder, "--resume", "auto", **{"solver.max_iter": 4}))
    assert code == 0, capsys.readouterr().err[-2000:]
    assert [it for it, _ in ckpt.list_checkpoints(folder)] == [3, 4]
    assert not (folder / LOCK_NAME).exists()


def test_a_run_that_fails_to_start_leaves_no_lock_and_no_folder(data_root, tmp_path):
    folder = tmp_path / "new" / "run"
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Trainer.from_config(tiny_cfg(data_root), output_dir=folder, device="cpu",
                            resume=tmp_path / "missing.pth", progress=False)
    assert not (tmp_path / "new").exists()


def test_a_refused_new_run_releases_the_lock(data_root, tmp_path, one_thread):
    folder = tmp_path / "run"
    Trainer.from_config(tiny_cfg(data_root, **{"solver.max_iter": 1}), output_dir=folder,
                        device="cpu", progress=False).train()
    before = sorted(p.name for p in folder.iterdir())
    assert train_main()(train_argv(data_root, folder)) == 2  # holds another run: not locked
    assert sorted(p.name for p in folder.iterdir()) == before
