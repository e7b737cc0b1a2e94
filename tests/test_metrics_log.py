"""metrics.jsonl survives interruptions: a failed rewrite leaves it as it was, a damaged last
line is dropped with a warning, a damaged line elsewhere is an error naming the file and line."""

import json
import logging
import os
import subprocess
import sys

import pytest
from trainer_helpers import REPO_ROOT, train_argv, train_main

from ssd.engine.metrics_log import MetricsFileError, MetricsLog, read_metrics

# Bytes a process may write per file in the file-size-limit test: far less than the rewrite.
FILE_SIZE_LIMIT = 64


def write_records(folder, iterations, tail=""):
    """metrics.jsonl in `folder` with one train record per iteration, then `tail` as is."""
    path = folder / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "iteration": i, "loss": 1.0 / i}) + "\n" for i in iterations]
    path.write_text("".join(lines) + tail)
    return path


def test_truncate_after_under_a_file_size_limit_leaves_the_file_intact(tmp_path):
    path = write_records(tmp_path, range(1, 41))
    before = path.read_bytes()
    # A child process: the limit would also stop pytest's own writes. SIGXFSZ ignored, so that
    # a write past the limit fails with EFBIG (as on a full disk) instead of killing it.
    child = (
        "import resource, signal, sys\n"
        "from ssd.engine.metrics_log import MetricsLog\n"
        f"log = MetricsLog({str(tmp_path)!r})\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    log.truncate_after(30)\n"
        "except OSError as err:\n"
        "    sys.exit(f'rewrite failed: {err}')\n"
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 1 and "rewrite failed" in result.stderr, result.stderr[-2000:]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["metrics.jsonl"]  # no temp


def test_truncate_after_keeps_the_earlier_lines_byte_for_byte(tmp_path):
    path = write_records(tmp_path, range(1, 11))
    lines = path.read_text().splitlines(keepends=True)
    MetricsLog(tmp_path, enabled=True).truncate_after(6)
    assert path.read_text() == "".join(lines[:6])


def test_a_broken_last_line_is_dropped_with_a_warning_naming_the_file_and_line(tmp_path, caplog):
    path = write_records(tmp_path, [1, 2, 3], tail='{"kind": "train", "iteration": 4, "lo')
    with caplog.at_level(logging.WARNING, logger="ssd.engine.metrics_log"):
        records = read_metrics(path)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert f"{path} line 4 is incomplete" in caplog.text


def test_a_broken_line_before_the_last_is_an_error_naming_the_file_and_line(tmp_path):
    path = write_records(tmp_path, [1, 2], tail='{"kind": "tr\n' + json.dumps({"iteration": 3}) + "\n")
    with pytest.raises(MetricsFileError, match=rf"^{path} line 3: not valid JSON .*column"):
        read_metrics(path)
    with pytest.raises(MetricsFileError, match=rf"^{path} line 3"):
        MetricsLog(tmp_path).truncate_after(5)


def test_appending_after_a_broken_last_line_removes_it_first(tmp_path, caplog):
    path = write_records(tmp_path, [1, 2], tail='{"kind": "train", "itera')
    with caplog.at_level(logging.WARNING, logger="ssd.engine.metrics_log"):
        MetricsLog(tmp_path).write({"kind": "train", "iteration": 3})
    assert f"{path} line 3 is incomplete" in caplog.text
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2, 3]
    assert path.read_text().endswith('"iteration": 3}\n')


def test_appending_after_a_whole_record_without_newline_keeps_it(tmp_path):
    path = write_records(tmp_path, [1], tail=json.dumps({"kind": "train", "iteration": 2}))
    MetricsLog(tmp_path).write({"kind": "train", "iteration": 3})
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2, 3]


def test_resume_from_a_run_whose_metrics_end_in_a_broken_line(tmp_path, capsys, caplog, one_thread):
    data_root, folder = tmp_path / "shapes", tmp_path / "run"
    assert train_main()(train_argv(data_root, folder, **{"solver.max_iter": 3})) == 0
    metrics = folder / "metrics.jsonl"
    with metrics.open("a") as stream:  # killed in the middle of writing iteration 4's record
        stream.write('{"kind": "train", "iteration": 4, "loss": 0.')
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="ssd.engine.metrics_log"):
        code = train_main()(train_argv(data_root, folder, "--resume", "auto",
                                       **{"solver.max_iter": 5}))
    assert code == 0, capsys.readouterr().err[-2000:]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{metrics} line 4 is incomplete" in warnings[0]
    assert [r["iteration"] for r in read_metrics(metrics) if r["kind"] == "train"] == [1, 2, 3, 4, 5]
