"""Video prediction: frames, size, rate and per-frame detections of videos the tests write,
through ssd.video and through the predict command (ssd-predict, scripts/predict.py)."""

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ssd.cli.common import run_cli
from ssd.cli.predict import main as predict_main
from ssd.config import load_config
from ssd.modeling import build_model
from ssd.predictor import Predictor
from ssd.video import VideoError, fourcc_name, predict_video

SMALL_CONFIG = Path(__file__).resolve().parent / "configs" / "ssd7_160.yaml"
FRAMES, FPS, SIZE = 12, 10.0, (96, 64)  # width, height


@pytest.fixture(scope="module")
def predictor():
    """An untrained SSD7 with a low threshold, so that every frame has detections."""
    cfg = load_config(SMALL_CONFIG)
    torch.manual_seed(0)
    return Predictor(build_model(cfg), config=cfg, device="cpu", precision="fp32",
                     score_threshold=0.05, top_k=5, batch_size=4)


def write_video(path: Path, frames: int = FRAMES) -> list[np.ndarray]:
    """An MJPG AVI of moving squares; returns the frames as a reader decodes them back."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    assert writer.isOpened()
    for index in range(frames):
        frame = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
        cv2.rectangle(frame, (5 + 4 * index, 10), (35 + 4 * index, 40), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while (read := capture.read())[0]:
        decoded.append(read[1])
    capture.release()
    return decoded


def test_video_out_and_json_lines_match_the_frames(predictor, tmp_path):
    decoded = write_video(tmp_path / "clip.avi")
    assert len(decoded) == FRAMES
    out_video, out_json = tmp_path / "out" / "clip_det.mp4", tmp_path / "out" / "clip_det.jsonl"
    old_umask = os.umask(0o022)
    try:
        summary = predict_video(predictor, tmp_path / "clip.avi", video_out=out_video,
                                json_out=out_json, progress=False)
    finally:
        os.umask(old_umask)
    assert (summary.frames, summary.width, summary.height) == (FRAMES, *SIZE)
    assert summary.fps == pytest.approx(FPS)
    capture = cv2.VideoCapture(str(out_video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == SIZE
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    capture.release()
    lines = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert all(line["detections"] for line in lines)  # a meaningful comparison below
    for index in (0, FRAMES - 1):  # the same frame predicted as a still image
        still = predictor.predict(decoded[index])
        found = lines[index]["detections"]
        assert [d["label"] for d in found] == [d["label"] for d in still]
        # Batched and single forward passes may sum in another order: float32 rounding only.
        np.testing.assert_allclose([d["score"] for d in found], [d["score"] for d in still],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([d["box"] for d in found], [d["box"] for d in still], atol=1e-2)
    for path in (out_video, out_json):
        assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in out_video.parent.iterdir()) == ["clip_det.jsonl", "clip_det.mp4"]


def test_corrupt_and_missing_videos_name_the_file(predictor, tmp_path):
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(VideoError, match="broken.mp4"):
        predict_video(predictor, garbage, video_out=tmp_path / "o.mp4", progress=False)
    with pytest.raises(VideoError, match="Video file not found: .*missing.mp4"):
        predict_video(predictor, tmp_path / "missing.mp4", progress=False)
    assert not (tmp_path / "o.mp4").exists()


def test_fourcc_names():
    assert fourcc_name(cv2.VideoWriter_fourcc(*"H264")) == "H264"
    assert fourcc_name(0) == ""


# ------------------------------------------------------------------- the predict command
@pytest.fixture(scope="module")
def checkpoint(predictor, tmp_path_factory):
    """The predictor's model as a checkpoint that carries its config."""
    path = tmp_path_factory.mktemp("weights") / "ssd7.pth"
    torch.save({"model": predictor.model.state_dict(), "config": predictor.cfg.to_dict()}, path)
    return path


def predict_args(checkpoint: Path, out: Path) -> list[str]:
    """The predictor fixture's settings as command-line flags."""
    return ["--weights", str(checkpoint), "--out", str(out), "--score-threshold", "0.05",
            "--top-k", "5", "--batch-size", "4", "--precision", "fp32", "--device", "cpu"]


def test_predict_command_writes_the_drawn_video_and_json_lines(predictor, checkpoint, tmp_path,
                                                                capsys):
    decoded = write_video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    code = predict_main([str(tmp_path / "clip.avi"), "--json", *predict_args(checkpoint, out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    capture = cv2.VideoCapture(str(out / "clip_det.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == SIZE
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    capture.release()
    lines = [json.loads(line) for line in (out / "clip_det.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([i / FPS for i in range(FRAMES)])
    middle = FRAMES // 2
    assert lines[middle]["detections"]  # a meaningful comparison
    still = predictor.predict(decoded[middle])
    assert [d["label"] for d in lines[middle]["detections"]] == [d["label"] for d in still]
    # The progress bar counts frames and shows their rate; the frames/s are printed at the end.
    assert re.search(rf"{FRAMES}/{FRAMES} .*(frame/s|s/frame)", captured.err)
    assert f"{FRAMES} frames ({SIZE[0]}x{SIZE[1]}, {FPS:g} fps)" in captured.out
    assert "frames/s (batch 4, fp32)" in captured.out
    video = json.loads((out / "detections.json").read_text())["videos"][str(tmp_path / "clip.avi")]
    assert (video["frames"], video["fps"], video["drawn"]) == (FRAMES, FPS, str(out / "clip_det.mp4"))
    assert sorted(p.name for p in out.iterdir()) == ["clip_det.jsonl", "clip_det.mp4", "detections.json"]


def test_predict_command_reports_a_corrupt_video_and_goes_on(checkpoint, tmp_path, capsys):
    """A corrupt and a missing video are reported with their paths and skipped like unreadable
    images; the image and the good video are still processed; exit status 1 at the end."""
    decoded = write_video(tmp_path / "good.avi")
    cv2.imwrite(str(tmp_path / "still.jpg"), decoded[0])
    broken, missing = tmp_path / "broken.mp4", tmp_path / "missing.mkv"
    broken.write_bytes(b"\x00\x01 not a video" * 100)
    out = tmp_path / "out"
    code = predict_main([str(broken), str(tmp_path / "still.jpg"), str(missing),
                         str(tmp_path / "good.avi"), "--no-progress", *predict_args(checkpoint, out)])
    out_text, err = capsys.readouterr()
    assert code == 1
    assert re.search(r"^1 image, .* images/s \(batch 4\)", out_text, re.MULTILINE)
    assert re.search(r"error: .*broken\.mp4.* \(skipped\)", err)
    assert f"error: Video file not found: {missing} (skipped)" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["good_det.mp4", "still_det.jpg"]


@pytest.mark.skipif(os.name != "posix", reason="displays are found through DISPLAY on posix")
def test_camera_without_a_display_says_why_with_exit_status_2(checkpoint, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    from ssd.video import display_available

    reason = display_available()
    assert reason is not None  # no display without DISPLAY / WAYLAND_DISPLAY on posix
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: predict_main(["--camera", "0", *predict_args(checkpoint, tmp_path / "out")]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --camera 0") and reason in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was loaded or written


def test_predict_command_needs_an_input_or_a_camera(capsys):
    with pytest.raises(SystemExit) as info:
        predict_main(["--weights", "w.pth"])
    assert info.value.code == 2
    assert "give images, folders, patterns or videos, or --camera INDEX" in capsys.readouterr().err
