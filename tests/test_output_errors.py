"""Outputs are written whole or not at all, and file-system errors are one `error:` line.

The commands run in their own processes: under a file-size limit (RLIMIT_FSIZE with SIGXFSZ
ignored, so that writes fail with EFBIG) and with a read-only output folder (mode 0555). Root
ignores folder permissions, so as root the command runs under `setpriv` without the
capabilities that override them."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch
from test_export_onnx import save_checkpoint
from test_video import predict_args, write_video
from trainer_helpers import train_argv, train_main

from ssd.cli.common import run_cli
from ssd.cli.export import main as export_main
from ssd.cli.predict import main as predict_main
from ssd.config import load_config
from ssd.export import check_export_options, supported_opsets
from ssd.fileio import atomic_torch_save, describe_os_error
from ssd.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
SMALL_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"
READ_ONLY = 0o555
# Capabilities that let root write into a folder whose mode forbids it.
OVERRIDE_CAPABILITIES = "-dac_override,-dac_read_search,-fowner"
COMMAND_TIMEOUT = 120  # seconds; each command takes a few


# ------------------------------------------------------------------------------- helpers
def unprivileged_prefix() -> list[str]:
    """What to run a command under so that folder permissions apply to it (skips the test
    where that cannot be arranged)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    prefix = [setpriv, f"--bounding-set={OVERRIDE_CAPABILITIES}",
              f"--inh-caps={OVERRIDE_CAPABILITIES}"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()[-200:]}")
    return prefix


def read_only_folder(path: Path) -> Path:
    """`path` created with mode 0555 (pytest removes it: tmp_path cleanup runs as the owner)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(READ_ONLY)
    return path


def limit_file_size(limit: int):
    """A subprocess preexec_fn: files cannot grow past `limit` bytes; the write fails with
    EFBIG instead of the process being killed by SIGXFSZ."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_script(script: str, *args, prefix=(), file_size_limit: int | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """scripts/<script>.py with `args` in its own process, with this checkout's ssd package."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([*prefix, sys.executable, str(SCRIPTS / f"{script}.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=COMMAND_TIMEOUT,
                          preexec_fn=limit_file_size(file_size_limit) if file_size_limit else None)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The `error:` lines on stderr, after checking there is no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(shapes data root, output folder of a 3-iteration tiny run: model_0000003.pth)."""
    root = tmp_path_factory.mktemp("run")
    data_root, out = root / "data", root / "run"
    argv = train_argv(data_root, out, **{"solver.max_iter": 3, "solver.lr_steps": [2]})
    assert train_main()(argv) == 0
    assert (out / "model_0000003.pth").is_file()
    return data_root, out


# ----------------------------------------------------------------------- error messages
def test_os_errors_name_what_failed_the_path_and_the_reason(tmp_path, capsys):
    def fail():
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    with pytest.raises(SystemExit) as info:
        run_cli(fail)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: cannot access: {tmp_path / 'x'}: Permission denied\n"
    assert describe_os_error(FileNotFoundError("Image file not found: a.png")) == \
        "Image file not found: a.png"  # a message of its own is kept


def test_checkpoint_save_under_a_file_size_limit_names_the_file_not_its_temp(tmp_path):
    """torch.save turns a failed write into RuntimeError("unexpected pos"): the OSError is
    raised instead, naming the checkpoint; the earlier file and no temp file remain."""
    script = ("import sys, torch\n"
              "from ssd.fileio import atomic_torch_save\n"
              "atomic_torch_save({'w': torch.zeros(1 << 16)}, sys.argv[1])\n")
    path = tmp_path / "best.pth"
    atomic_torch_save({"w": torch.ones(1)}, path)
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          preexec_fn=limit_file_size(len(before) * 2), timeout=COMMAND_TIMEOUT)
    assert done.returncode == 1
    assert f"OSError: [Errno 27] File too large: '{path}'" in done.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]


# ------------------------------------------------------------------------------- export
def test_export_under_a_file_size_limit_keeps_the_existing_file(tmp_path):
    save_checkpoint(tmp_path / "ssd7.pth")
    existing = tmp_path / "ssd7.onnx"
    existing.write_bytes(b"an earlier export" * 100)
    before = snapshot(tmp_path)
    done = run_script("export_onnx", "--weights", tmp_path / "ssd7.pth", "--out", existing,
                      "--exporter", "torchscript", file_size_limit=100_000)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot write: {existing}: File too large"]
    assert snapshot(tmp_path) == before  # byte-identical, and no temp file left


def test_export_to_a_read_only_folder_is_one_error_line(tmp_path):
    prefix = unprivileged_prefix()
    save_checkpoint(tmp_path / "ssd7.pth")
    out = read_only_folder(tmp_path / "models") / "ssd7.onnx"
    done = run_script("export_onnx", "--weights", tmp_path / "ssd7.pth", "--out", out,
                      "--exporter", "torchscript", prefix=prefix)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot write: {out}: Permission denied"]
    assert not any(out.parent.iterdir())


@pytest.mark.parametrize("opset", [3, 99])
def test_an_opset_torch_onnx_does_not_export_is_named_with_the_range(tmp_path, capsys, opset):
    save_checkpoint(tmp_path / "ssd7.pth")
    opsets = supported_opsets("auto")
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: export_main(["--weights", str(tmp_path / "ssd7.pth"), "--out",
                                     str(tmp_path / "x.onnx"), "--opset", str(opset)]))
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"error: --opset {opset}: torch.onnx exports opsets "
                                       f"{opsets.start} to {opsets.stop - 1} with the auto exporter\n")
    assert not (tmp_path / "x.onnx").exists()


def test_the_torchscript_exporter_has_its_own_opset_range():
    last = supported_opsets("torchscript").stop - 1
    check_export_options(False, last, "torchscript")
    with pytest.raises(ValueError, match=f"--opset {last + 1}: .* to {last} with the torchscript"):
        check_export_options(False, last + 1, "torchscript")


# ------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def predict_weights(tmp_path_factory) -> Path:
    """An untrained SSD7 as a checkpoint that carries its config."""
    cfg = load_config(SMALL_CONFIG)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "ssd7.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    return path


def test_predict_under_a_file_size_limit_keeps_the_earlier_video_output(predict_weights, tmp_path):
    """OpenCV's encoder does not report failed writes: the output is read back before it is
    published, so a fragment never replaces the earlier output."""
    write_video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip_det.mp4").write_bytes(b"an earlier, complete output" * 400)  # > the limit
    (out / "clip_det.jsonl").write_text('{"frame": 0}\n')
    before = snapshot(out)
    done = run_script("predict", tmp_path / "clip.avi", "--json", "--no-progress",
                      *predict_args(predict_weights, out), file_size_limit=3000)
    assert done.returncode == 2
    lines = error_lines(done)
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write: {out / 'clip_det.mp4'}: ")
    assert "file-size limit" in lines[0]
    assert snapshot(out) == before


def test_a_truncated_video_is_reported_with_frames_read_and_expected(predict_weights, tmp_path,
                                                                      capsys):
    frames = 30
    write_video(tmp_path / "full.avi", frames)
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])  # the AVI header still says 30
    out = tmp_path / "out"
    code = predict_main([str(tmp_path / "cut.avi"), "--json", "--no-progress",
                         *predict_args(predict_weights, out)])
    err = capsys.readouterr().err
    assert code == 1
    message = next(line for line in err.splitlines() if line.startswith("error:"))
    read = int(message.split("after ")[1].split(" of")[0])
    assert 0 < read < frames and f"cut.avi stops decoding after {read} of its {frames} frames" in message
    assert sorted(p.name for p in out.iterdir()) == ["detections.json"]  # no video outputs


def test_predict_into_a_read_only_folder_fails_before_loading_the_model(predict_weights, tmp_path):
    prefix = unprivileged_prefix()
    write_video(tmp_path / "clip.avi")
    out = read_only_folder(tmp_path / "out")
    done = run_script("predict", tmp_path / "clip.avi", "--no-progress",
                      *predict_args(predict_weights, out), prefix=prefix)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot write in folder: {out}: Permission denied"]


# ------------------------------------------------------------------------ train and eval
def test_train_into_a_read_only_folder_is_one_error_line(trained_run, tmp_path):
    prefix = unprivileged_prefix()
    data_root, _ = trained_run
    out = read_only_folder(tmp_path / "runs") / "new"
    done = run_script("train", *train_argv(data_root, out), prefix=prefix)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot create folder: {out}: Permission denied"]


def test_resume_in_a_read_only_folder_is_one_error_line(trained_run, tmp_path):
    prefix = unprivileged_prefix()
    data_root, run = trained_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = snapshot(out)
    out.chmod(READ_ONLY)
    done = run_script("train", *train_argv(data_root, out, "--resume", "auto"), prefix=prefix)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot write in folder: {out}: Permission denied"]
    assert snapshot(out) == before


def test_checkpoint_save_under_a_file_size_limit_keeps_the_earlier_checkpoint(trained_run,
                                                                             tmp_path):
    data_root, run = trained_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    earlier = (out / "model_0000003.pth").read_bytes()
    assert len(earlier) > 1_000_000  # the limit below stops the next checkpoint
    done = run_script("train", *train_argv(data_root, out, "--resume", "auto",
                                           **{"solver.max_iter": 6}),
                      file_size_limit=1_000_000)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot write: {out / 'model_0000006.pth'}: File too large"]
    assert (out / "model_0000003.pth").read_bytes() == earlier
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]


def test_eval_into_a_read_only_folder_fails_before_evaluating(trained_run, tmp_path):
    prefix = unprivileged_prefix()
    _, run = trained_run
    out = read_only_folder(tmp_path / "eval")
    start = time.perf_counter()
    done = run_script("eval", "--weights", run / "model_0000003.pth", "--device", "cpu",
                      "--output", out, "--no-progress", prefix=prefix)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot write in folder: {out}: Permission denied"]
    assert "mAP" not in done.stdout and "images/s" not in done.stdout  # nothing was evaluated
    assert time.perf_counter() - start < COMMAND_TIMEOUT


# ------------------------------------------------------------------------------ convert
def test_convert_into_a_read_only_folder_is_one_error_line(trained_run, tmp_path):
    prefix = unprivileged_prefix()
    data_root, _ = trained_run
    out = read_only_folder(tmp_path / "converted") / "yolo"
    done = run_script("convert_dataset", "--from", "voc", "--to", "yolo", "--root",
                      data_root / "VOCshapes", "--out", out, "--no-progress", prefix=prefix)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: cannot write: {out}: Permission denied"]
    assert not any(out.parent.iterdir())


def test_convert_under_a_file_size_limit_leaves_nothing_behind(trained_run, tmp_path):
    data_root, _ = trained_run
    done = run_script("convert_dataset", "--from", "voc", "--to", "coco", "--root",
                      data_root / "VOCshapes", "--out", tmp_path / "coco", "--no-progress",
                      file_size_limit=1000)
    assert done.returncode == 2
    lines = error_lines(done)
    assert len(lines) == 1 and lines[0].startswith("error: cannot write: ")
    assert f"{tmp_path / 'coco'}" in lines[0] and lines[0].endswith(": File too large")
    assert not list(tmp_path.iterdir())


def test_video_capture_reads_back_what_the_writer_wrote(tmp_path):
    """The check behind the file-size-limit case: a whole file passes, a cut one does not."""
    from ssd.video import reads_back_whole

    writer = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    frame = (torch.arange(48 * 64 * 3) % 255).to(torch.uint8).reshape(48, 64, 3).numpy()
    for _ in range(10):
        writer.write(frame)
    writer.release()
    assert reads_back_whole(tmp_path / "v.mp4", 10)
    assert not reads_back_whole(tmp_path / "v.mp4", 11)
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    assert not reads_back_whole(tmp_path / "cut.mp4", 10)
