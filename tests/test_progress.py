"""Progress displays (ssd.progress) and the training log lines: a bar only on a terminal, plain
lines otherwise (never a carriage return in a redirected stderr)."""

import io
import re
import subprocess
import sys

import pytest
from tqdm import tqdm
from trainer_helpers import REPO_ROOT, TRAIN_SCRIPT, train_argv, train_main

from ssd.progress import PlainProgress, progress_bar, shows_bar

TINY_RUN_ITERATIONS = 6  # solver.max_iter of trainer_helpers.tiny_overrides, logged every iteration
LOG_LINE = re.compile(r"iteration (\d+)/6  loss \d+\.\d{4} \(loc \d+\.\d{4}, conf \d+\.\d{4}\)  "
                      r"lr \S+  \d+\.\d images/s \(data wait \d+%\)  ETA \d+:\d\d:\d\d")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def test_a_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not shows_bar() and isinstance(progress_bar(total=3), PlainProgress)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert shows_bar() and not shows_bar(enabled=False)
    bar = progress_bar(total=3)
    assert isinstance(bar, tqdm)
    bar.close()


def test_without_a_terminal_a_plain_line_every_tenth(capsys):
    assert list(progress_bar(range(20), desc="work", unit="img")) == list(range(20))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("work: 2/20 (10%) img, ")
    assert lines[-1].startswith("work: 20/20 (100%) img, ")
    with progress_bar(total=20, enabled=False) as silent:
        silent.update(20)
    assert capsys.readouterr().err == ""


def test_no_progress_training_logs_every_log_period(data_root, tmp_path, caplog):
    with caplog.at_level("INFO", logger="ssd.engine.hooks"):
        assert train_main()(train_argv(data_root, tmp_path / "run")) == 0
    logged = [LOG_LINE.fullmatch(record.message) for record in caplog.records]
    assert [int(found.group(1)) for found in logged if found] == list(
        range(1, TINY_RUN_ITERATIONS + 1))


def test_training_with_stderr_in_a_file_writes_lines_not_frames(data_root, tmp_path):
    """The real command with its progress on, stderr redirected to a file: no carriage return,
    and the log lines are there."""
    argv = [arg for arg in train_argv(data_root, tmp_path / "run") if arg != "--no-progress"]
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *argv], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=stderr, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    assert len([line for line in text.splitlines() if LOG_LINE.fullmatch(line)]) == TINY_RUN_ITERATIONS
