"""Detect objects in images, videos and camera streams: draw them, print them, optionally
write them as JSON (ssd-predict, or python scripts/predict.py in a clone).

    ssd-predict image.jpg --weights weights/ssd300_mAP_77.43_v2.pth
    ssd-predict photos/ more.png "shots/*.jpg" --weights runs/shapes/best.pth --json
    ssd-predict image.jpg --score-threshold 0.3 --precision fp32 --output drawn/
    ssd-predict image.jpg --weights runs/shapes/best.pth --score-threshold auto  # best-F1 threshold
    ssd-predict clip.mp4 --weights runs/shapes/best.pth --json     # out/clip_det.mp4 + .jsonl
    ssd-predict --camera 0 --weights runs/shapes/best.pth          # a live window (q or Esc)

Inputs are image files, folders (their images, not recursive), glob patterns and video files
(by extension: .mp4, .avi, .mov, .mkv, ...). For each image, <output>/<name>_det.jpg shows the
boxes with class names and scores, and a table of the detections is printed; --json also
writes <output>/detections.json (boxes in the original image's pixels, x1 y1 x2 y2). Images go
through the network --batch-size at a time, with a progress bar when there are several.

A video gives <output>/<name>_det.mp4 (the input's size and frame rate, boxes drawn) and with
--json <output>/<name>_det.jsonl, one line per frame: {"frame", "time", "detections"}; the
progress bar counts frames and frames/s, and the frames/s of the whole pass is printed at the
end. --camera INDEX shows a camera's frames with their detections in a window (it needs a
display; with --json the detections also go to <output>/camera<INDEX>_det.jsonl).

An input that cannot be read (a missing file, a corrupt image or video, a video that stops
decoding before the frame count its container states) is reported with its path and skipped
(a video's outputs are then not written); the others are processed, and the exit status is 1
at the end. An output that cannot be written (read-only folder, disk full, file-size limit)
stops the command with exit status 2; outputs are written whole or not at all.

The config comes from the weights file when it carries one (this project's checkpoints),
else --config (a file, or a built-in config such as voc300.yaml), else the built-in SSD300
VOC model (the classic SSD300 VOC weights). --weights defaults to weights/ssd300.pth in the
working directory. --precision defaults to the fastest safe one for the device: bf16 on CPUs
with native bfloat16, fp16 on CUDA, else fp32.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

from ssd.cli.common import add_version_argument, load_cli_config, pick_device, run_cli
from ssd.commands import clone_doc
from ssd.fileio import atomic_write, check_writable_folder

DEFAULT_WEIGHTS = Path("weights") / "ssd300.pth"  # relative to the working directory
DETECTIONS_SUFFIX = "_det"  # <output>/<name>_det.jpg, <name>_det.mp4, <name>_det.jsonl
VIDEO_OUT_EXTENSION = ".mp4"
DEFAULT_SCORE_THRESHOLD = 0.5
AUTO_THRESHOLD = "auto"  # --score-threshold auto: the checkpoint's stored best-F1 threshold


def score_threshold_argument(text: str) -> float | str:
    """--score-threshold: a number, or "auto"."""
    if text == AUTO_THRESHOLD:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or {AUTO_THRESHOLD!r}, got {text!r}") from None


def stored_score_threshold(weights: Path) -> float | None:
    """The best-F1 score threshold a training run's evaluation stored in the checkpoint
    ("score_threshold"), or None when it has none (a classic state_dict, no evaluation ran)."""
    from ssd.fileio import safe_torch_load

    state = safe_torch_load(weights)
    value = state.get("score_threshold") if isinstance(state, dict) else None
    return float(value) if value is not None else None


def resolve_score_threshold(setting: float | str, weights: Path) -> float:
    """The threshold to use: `setting` when a number; for "auto" the checkpoint's stored one,
    else DEFAULT_SCORE_THRESHOLD (said on stderr)."""
    if setting != AUTO_THRESHOLD:
        return float(setting)
    if not weights.is_file():  # the predictor says how to get weights
        return DEFAULT_SCORE_THRESHOLD
    stored = stored_score_threshold(weights)
    if stored is None:
        print(f"note: {weights} stores no score threshold (no evaluation ran during its "
              f"training); --score-threshold auto uses {DEFAULT_SCORE_THRESHOLD}", file=sys.stderr)
        return DEFAULT_SCORE_THRESHOLD
    print(f"score threshold {stored:.4f} (best F1 of the evaluation stored in {weights})")
    return stored


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, folders of images, glob patterns, or video files")
    parser.add_argument("--camera", type=int, metavar="INDEX",
                        help="also show camera INDEX (0: the first one) live in a window")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                        help=f"checkpoint or classic state_dict (default {DEFAULT_WEIGHTS})"
                             f"{clone_doc('weights/README.md')}")
    parser.add_argument("--config", help="YAML config, used when the weights carry none "
                                         "(default: configs/voc300.yaml)")
    parser.add_argument("--score-threshold", type=score_threshold_argument,
                        default=DEFAULT_SCORE_THRESHOLD,
                        help=f"minimum class score of a detection (default {DEFAULT_SCORE_THRESHOLD}); "
                             f"{AUTO_THRESHOLD}: the best-F1 threshold the training's last evaluation "
                             f"stored in the checkpoint ({DEFAULT_SCORE_THRESHOLD} when it has none)")
    parser.add_argument("--nms-threshold", type=float,
                        help="NMS IoU threshold (default: test.nms_threshold, 0.45)")
    parser.add_argument("--top-k", type=int, help="detections kept per image (default: test.top_k, 200)")
    parser.add_argument("--output", "--out", type=Path, default=Path("out"),
                        help="output folder (default out/; --out is the old spelling)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="also write <output>/detections.json")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                        help="inference precision (default: the fastest safe one for the device)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_version_argument(parser)
    args = parser.parse_args(argv)
    if not args.inputs and args.camera is None:
        parser.error("nothing to predict: give images, folders, patterns or videos, or --camera INDEX")
    return args


def main(argv: list[str] | None = None) -> int:
    """Predict every input; returns the exit status (1 when an input was skipped)."""
    args = parse_args(argv)
    from ssd.predictor import Predictor

    if args.camera is not None:
        check_display(args.camera)  # before the model loads: fail fast
    images, videos, failures = collect_inputs(args.inputs)
    if not images and not videos and args.camera is None:
        raise FileNotFoundError("; ".join(reason for _, reason in failures))
    for _, reason in failures:
        print(f"error: {reason} (skipped)", file=sys.stderr)
    check_writable_folder(args.output)  # before the model loads: fail fast
    weights = Path(args.weights)
    config = load_cli_config(args.config) if args.config else None
    score_threshold = resolve_score_threshold(args.score_threshold, weights)
    predictor = Predictor(weights, config=config, device=pick_device(args.device),
                          precision=args.precision, score_threshold=score_threshold,
                          nms_threshold=args.nms_threshold, top_k=args.top_k,
                          batch_size=args.batch_size)
    start = time.perf_counter()
    results, unreadable = run(predictor, images, args.output, args.batch_size,
                              progress=not args.no_progress and len(images) > 1)
    image_seconds = time.perf_counter() - start
    video_results, broken = run_videos(predictor, videos, args.output, args.json,
                                       progress=not args.no_progress)
    if args.camera is not None:
        json_out = args.output / f"camera{args.camera}{DETECTIONS_SUFFIX}.jsonl" if args.json else None
        summary = predict_video_inputs(predictor, args.camera, None, json_out, show=True,
                                       progress=not args.no_progress)
        video_results[summary.source] = summary
    failures += unreadable + broken
    if args.json:
        write_json(args.output / "detections.json", results, failures, predictor, weights,
                   video_results)
    found = sum(len(entry["detections"]) for entry in results.values())
    if images:
        rate = len(results) / image_seconds if image_seconds > 0 else 0.0
        print(f"{_count(len(results), 'image')}, {_count(found, 'detection')} (score > "
              f"{score_threshold}, {predictor.precision}) in {image_seconds:.1f} s: "
              f"{rate:.1f} images/s (batch {args.batch_size}) -> {args.output}/")
    if failures:
        print(f"{_count(len(failures), 'input')} failed (see the errors above)")
    return 1 if failures else 0


def check_display(camera: int) -> None:
    """Raises VideoError (a user error) when no window can be shown for the camera."""
    from ssd.video import VideoError, display_available

    reason = display_available()
    if reason is not None:
        raise VideoError(f"--camera {camera} shows its detections in a window, which cannot be "
                         f"opened here: {reason}")


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
    """Files as given, folders' image files (sorted, not recursive), glob matches (sorted);
    duplicates removed; files with a video extension are videos.

    Returns:
        (image paths, video paths, [(input, reason)] for each missing file, folder without
        images or pattern that matches nothing).
    """
    from ssd.video import is_video_path

    paths: list[Path] = []
    failures: list[tuple[str, str]] = []
    for item in inputs:
        found, reason = _expand_input(item)
        paths += found
        if reason:
            failures.append((item, reason))
    unique = list(dict.fromkeys(paths))
    videos = [path for path in unique if is_video_path(path)]
    return [path for path in unique if not is_video_path(path)], videos, failures


def _expand_input(item: str) -> tuple[list[Path], str | None]:
    """One command-line input -> (its image paths, None) or ([], why it names no image)."""
    from ssd.data.common import IMAGE_EXTENSIONS

    path = Path(item)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        return found, None if found else f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}"
    if path.is_file():
        return [path], None
    if any(char in item for char in "*?["):
        found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        return found, None if found else f"No files match {item}"
    from ssd.video import is_video_path

    return [], f"{'Video' if is_video_path(path) else 'Image'} file not found: {item}"


def run(predictor, paths: list[Path], out: Path, batch_size: int, progress: bool):
    """Detect, draw and print every image; returns ({path: entry}, [(path, reason)] for the
    images that could not be read)."""
    from ssd.drawing import save_image
    from ssd.images import load_image
    from ssd.progress import progress_bar, write_line

    results, failures = {}, []
    names = output_names(paths)
    with progress_bar(total=len(paths), unit="image", enabled=progress) as bar:
        for start in range(0, len(paths), batch_size):
            batch, images = [], []
            for path in paths[start:start + batch_size]:
                try:
                    images.append(load_image(path))
                    batch.append(path)
                except (OSError, ValueError) as err:
                    failures.append((str(path), str(err)))
                    write_line(f"error: {err} (skipped)", file=sys.stderr)
            for path, image, found in zip(batch, images, predictor.predict_batch(images)):
                drawn_path = out / f"{names[path]}{DETECTIONS_SUFFIX}.jpg"
                save_image(drawn_path, predictor.draw(image, found))
                write_line(format_table(path, image.shape, found))
                results[str(path)] = {"width": image.shape[1], "height": image.shape[0],
                                      "drawn": str(drawn_path), "detections": found}
            bar.update(len(paths[start:start + batch_size]))
    return results, failures


def run_videos(predictor, videos: list[Path], out: Path, write_json_lines: bool, progress: bool):
    """Predict every video into <output>/<name>_det.mp4 (and <name>_det.jsonl); returns
    ({path: VideoSummary}, [(path, reason)] for the videos that could not be read or written)."""
    from ssd.video import VideoError

    summaries, failures = {}, []
    names = output_names(videos)
    for path in videos:
        stem = out / f"{names[path]}{DETECTIONS_SUFFIX}"
        json_out = stem.with_suffix(".jsonl") if write_json_lines else None
        try:
            summaries[str(path)] = predict_video_inputs(
                predictor, path, stem.with_suffix(VIDEO_OUT_EXTENSION), json_out, show=False,
                progress=progress)
        except VideoError as err:
            failures.append((str(path), str(err)))
            print(f"error: {err} (skipped)", file=sys.stderr)
    return summaries, failures


def predict_video_inputs(predictor, source: Path | int, video_out: Path | None,
                         json_out: Path | None, show: bool, progress: bool):
    """One video or camera through `ssd.video.predict_video`, with its frames/s printed."""
    from ssd.video import predict_video

    summary = predict_video(predictor, source, video_out=video_out, json_out=json_out, show=show,
                            progress=progress)
    written = [str(path) for path in (summary.video_out, summary.json_out) if path is not None]
    print(f"{summary.source}: {_count(summary.frames, 'frame')} ({summary.width}x{summary.height}, "
          f"{summary.fps:g} fps) in {summary.seconds:.1f} s: {summary.frames_per_second:.1f} "
          f"frames/s (batch {predictor.batch_size}, {predictor.precision})"
          + (f" -> {', '.join(written)}" if written else ""))
    return summary


def output_names(paths: list[Path]) -> dict[Path, str]:
    """File stem per image; a stem seen before gets _2, _3, ... so outputs never collide."""
    names, seen = {}, {}
    for path in paths:
        count = seen[path.stem] = seen.get(path.stem, 0) + 1
        names[path] = path.stem if count == 1 else f"{path.stem}_{count}"
    return names


def format_table(path: Path, shape: tuple, detections: list[dict]) -> str:
    """A readable table of one image's detections."""
    height, width = shape[:2]
    lines = [f"{path} ({width}x{height}): {_count(len(detections), 'detection')}"]
    if detections:
        name_width = max(8, *(len(d["class_name"]) for d in detections))
        lines.append(f"  {'class':<{name_width}s}  {'score':>5s}  {'x1':>7s} {'y1':>7s} "
                     f"{'x2':>7s} {'y2':>7s}")
        for det in detections:
            x1, y1, x2, y2 = det["box"]
            lines.append(f"  {det['class_name']:<{name_width}s}  {det['score']:5.3f}  "
                         f"{x1:7.1f} {y1:7.1f} {x2:7.1f} {y2:7.1f}")
    return "\n".join(lines)


def write_json(path: Path, results: dict, failures: list[tuple[str, str]], predictor,
               weights: Path, videos: dict | None = None) -> None:
    """detections.json: settings, the model's class names (label order), {image: size, drawn
    file, detections}, {video: size, frame rate, frames, output files (the detections are in its
    .jsonl)}, {input: why it failed}."""
    post = predictor.postprocess
    document = {
        "weights": str(weights),
        "settings": {"score_threshold": post.score_threshold, "nms_threshold": post.nms_threshold,
                     "top_k": post.top_k, "precision": predictor.precision,
                     "image_size": predictor.cfg.model.image_size},
        "box_format": "x1, y1, x2, y2 in pixels of the original image",
        "class_names": list(predictor.class_names),  # the model's classes in label order
        "images": results,
        "videos": {source: _video_entry(summary) for source, summary in (videos or {}).items()},
        "failed": dict(failures),
    }
    atomic_write(path, json.dumps(document, indent=2))
    print(f"Wrote {path}")


def _video_entry(summary) -> dict:
    """A VideoSummary as detections.json describes a video."""
    return {"width": summary.width, "height": summary.height, "fps": summary.fps,
            "frames": summary.frames, "frames_per_second": round(summary.frames_per_second, 2),
            "drawn": None if summary.video_out is None else str(summary.video_out),
            "detections": None if summary.json_out is None else str(summary.json_out)}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


if __name__ == "__main__":  # python -m ssd.cli.predict, torchrun -m ssd.cli.predict
    run_cli(main)
