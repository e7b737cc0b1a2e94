"""Detections on videos and cameras.

    summary = predict_video(predictor, "clip.mp4", video_out="out/clip_det.mp4",
                            json_out="out/clip_det.jsonl")

Three stages run at once so the network never waits for the disk: a reader thread decodes
frames into a bounded queue, the calling thread predicts them in batches of
`predictor.batch_size`, and a writer thread draws the boxes and encodes the output video (OpenCV
and PyTorch release the GIL while they work). The output video has the input's size and frame
rate; the JSON Lines file has one line per frame:
``{"frame": 0, "time": 0.0, "detections": [{"box": [x1, y1, x2, y2], "score", "label",
"class_name"}, ...]}``. Outputs are written under temporary names and renamed when complete:
a video that stops decoding before the frame count its container states, or an output the
encoder could not write whole (disk full, file-size limit), leaves no output and an existing
one intact.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from ssd.fileio import CANNOT_WRITE, note_failed_action, publish_staged
from ssd.progress import progress_bar

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
FALLBACK_FPS = 25.0  # for sources that report no frame rate (some cameras and streams)
QUEUE_BATCHES = 4  # decoded / predicted batches buffered between the stages
# Writer codec by output extension; mp4v and MJPG ship with every OpenCV build that has FFmpeg.
FOURCC_BY_EXTENSION = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG",
                       ".mkv": "MJPG"}
DEFAULT_FOURCC = "mp4v"
QUIT_KEYS = (ord("q"), 27)  # q or Esc closes the camera window
_END = object()  # end-of-stream marker between the stages


class VideoError(ValueError):
    """A video or camera cannot be opened, decoded or written; the message names it."""


@dataclass
class VideoSummary:
    """What `predict_video` did."""

    source: str
    frames: int
    fps: float
    width: int
    height: int
    seconds: float  # wall time of the whole pass
    video_out: Path | None = None
    json_out: Path | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def is_video_path(path: str | Path) -> bool:
    """True when `path` has a video file extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def fourcc_name(code: float) -> str:
    """The four characters of an OpenCV FOURCC code (CAP_PROP_FOURCC), '' when unknown."""
    code = int(code)
    chars = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return chars if code and chars.isprintable() else ""


def open_video(source: str | Path | int) -> cv2.VideoCapture:
    """A VideoCapture for a file path or a camera index, or a VideoError that says why not."""
    if isinstance(source, int):
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise VideoError(f"Camera {source} cannot be opened (no such device, or it is in use)")
        return capture
    path = Path(source)
    if not path.is_file():
        raise VideoError(f"Video file not found: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"Cannot open {path} as a video: the file is corrupt, not a video, or "
                         f"in a container OpenCV's video backend does not read")
    return capture


def read_frames(capture: cv2.VideoCapture, source: str) -> Iterator[np.ndarray]:
    """Decoded frames (uint8 [H, W, 3] BGR) until the end of the stream.

    Raises:
        VideoError: not even the first frame decodes (names the codec when OpenCV reports it),
            or decoding stops before the frame count the container states (a truncated or
            damaged file: names the frames read and expected), after the frames read.
    """
    expected = stated_frame_count(capture)
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok or frame is None:
            break
        frames += 1
        yield frame
    if frames == 0:
        codec = fourcc_name(capture.get(cv2.CAP_PROP_FOURCC))
        detail = (f"its codec '{codec}' is not one this OpenCV build decodes" if codec
                  else "no frame could be decoded (corrupt or empty video)")
        raise VideoError(f"Cannot read frames from {source}: {detail}")
    if expected is not None and frames < expected:
        raise VideoError(f"{source} stops decoding after {frames} of its {expected} frames "
                         f"(truncated or damaged file); its output is not written")


def stated_frame_count(capture: cv2.VideoCapture) -> int | None:
    """The number of frames the container states (CAP_PROP_FRAME_COUNT), None when it states
    none (cameras, streams, some containers)."""
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return count if count > 0 else None


class _AtomicVideoWriter:
    """cv2.VideoWriter into a temporary file beside `path`, renamed to `path` on `close()`
    once the file reads back with every frame written."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path = path
        self.frames = 0
        # Keep the extension last: OpenCV picks the container from it.
        self.temp = path.with_name(f".{path.stem}.partial{path.suffix}")
        _create_staged(path, self.temp)  # OpenCV does not say why it cannot open a file
        codec = FOURCC_BY_EXTENSION.get(path.suffix.lower(), DEFAULT_FOURCC)
        self.writer = cv2.VideoWriter(str(self.temp), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not self.writer.isOpened():
            self.temp.unlink(missing_ok=True)
            raise VideoError(f"Cannot write {path}: OpenCV has no encoder for codec '{codec}' "
                             f"with the '{path.suffix}' container")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def close(self, keep: bool) -> None:
        """Finish the file; with `keep`, publish it as `path`.

        Raises:
            OSError: the file does not read back with every frame written (OpenCV's encoder
                does not report failed writes: a full disk or a file-size limit).
        """
        self.writer.release()
        try:
            if keep and not reads_back_whole(self.temp, self.frames):
                raise note_failed_action(
                    OSError(errno.EIO, f"the video encoder could not write all {self.frames} "
                                       f"frames (is the disk full, or a file-size limit "
                                       f"reached?)"), CANNOT_WRITE, self.path)
        except BaseException:
            publish_staged(self.temp, self.path, keep=False)
            raise
        publish_staged(self.temp, self.path, keep)


def _create_staged(path: Path, temp: Path) -> None:
    """Create `path`'s folder and the empty temporary file `temp`; an OSError names `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.touch()
    except OSError as err:
        note_failed_action(err, CANNOT_WRITE, path, temp)
        raise


def reads_back_whole(path: Path, frames: int) -> bool:
    """True when the video file `path` opens, states `frames` frames and its last frame
    decodes (a file cut short misses its index or its last frames)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened() or stated_frame_count(capture) != frames:
            return False
        capture.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
        ok, frame = capture.read()
        return ok and frame is not None
    finally:
        capture.release()


class _JsonLinesWriter:
    """One JSON line per frame into a temporary file, renamed to `path` on `close()`."""

    def __init__(self, path: Path):
        self.path = path
        self.temp = path.with_name(f".{path.name}.partial")
        _create_staged(path, self.temp)
        self.stream = self._named_errors(lambda: open(self.temp, "w", encoding="utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        self._named_errors(lambda: self.stream.write(json.dumps(record) + "\n"))

    def close(self, keep: bool) -> None:
        try:
            self._named_errors(self.stream.close)
        except BaseException:
            publish_staged(self.temp, self.path, keep=False)
            raise
        publish_staged(self.temp, self.path, keep)

    def _named_errors(self, action: Callable[[], Any]) -> Any:
        """`action()`, its OSError naming `path` (not the temporary file) as what failed."""
        try:
            return action()
        except OSError as err:
            note_failed_action(err, CANNOT_WRITE, self.path, self.temp)
            raise


def _close_writers(writers: list, keep: bool) -> None:
    """Close every writer, publishing its file when `keep`; after a failure the remaining
    writers' files are not published. The first error is raised once all are closed."""
    error: BaseException | None = None
    for writer in writers:
        try:
            writer.close(keep=keep and error is None)
        except BaseException as err:
            error = error or err
    if error is not None:
        raise error


def _produce(frames: Iterator[np.ndarray], batch_size: int, out: queue.Queue,
             failure: list[BaseException]) -> None:
    """Reader thread: batches of decoded frames into `out`, then _END."""
    try:
        batch: list[np.ndarray] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == batch_size:
                out.put(batch)
                batch = []
        if batch:
            out.put(batch)
    except BaseException as error:  # reported by the main thread
        failure.append(error)
    finally:
        out.put(_END)


def _consume(jobs: queue.Queue, handle: Callable[[np.ndarray, list], None],
             failure: list[BaseException]) -> None:
    """Writer thread: handle (frame, detections) pairs until _END."""
    try:
        while (job := jobs.get()) is not _END:
            for frame, detections in job:
                handle(frame, detections)
    except BaseException as error:
        failure.append(error)
        while jobs.get() is not _END:  # drain, so the main thread never blocks on a full queue
            pass


def predict_video(
    predictor,
    source: str | Path | int,
    video_out: str | Path | None = None,
    json_out: str | Path | None = None,
    show: bool = False,
    progress: bool = True,
) -> VideoSummary:
    """Detect objects in every frame of a video file or camera.

    Args:
        predictor: an `ssd.predictor.Predictor` (its batch_size, thresholds and precision).
        source: a video file, or a camera index.
        video_out: where to write the video with boxes drawn (same size and frame rate).
        json_out: where to write one JSON line of detections per frame.
        show: show each drawn frame in a window (press q or Esc to stop).
        progress: a progress bar counting frames (its rate is frames/s).

    Returns:
        a `VideoSummary` (frames, fps, size, wall time).

    Raises:
        VideoError: the source cannot be opened or decoded (also: it stops before the frame
            count its container states), or the output cannot be encoded; no output is written.
        OSError: an output cannot be written whole (permission denied, disk full, file-size
            limit); an existing output file is left as it was.
    """
    name = f"camera {source}" if isinstance(source, int) else str(source)
    capture = open_video(source)
    fps = capture.get(cv2.CAP_PROP_FPS) or FALLBACK_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    frames = read_frames(capture, name)
    try:
        first = next(frames)
    except StopIteration:  # read_frames raises VideoError itself when nothing decodes
        raise VideoError(f"{name} has no frames") from None
    height, width = first.shape[:2]
    video_writer = json_writer = None
    try:
        if video_out is not None:
            video_writer = _AtomicVideoWriter(Path(video_out), fps, (width, height))
        if json_out is not None:
            json_writer = _JsonLinesWriter(Path(json_out))
    except BaseException:
        if video_writer is not None:
            video_writer.close(keep=False)
        capture.release()
        raise
    writers = [writer for writer in (video_writer, json_writer) if writer is not None]
    counter = {"frame": 0}
    stop = threading.Event()

    def handle(frame: np.ndarray, detections: list) -> None:
        """Writer thread: one frame's JSON line, drawn frame and window."""
        index = counter["frame"]
        counter["frame"] += 1
        if json_writer is not None:
            json_writer.write({"frame": index, "time": round(index / fps, 6),
                               "detections": detections})
        if video_writer is not None or show:
            drawn = predictor.draw(frame, detections)
            if video_writer is not None:
                video_writer.write(drawn)
            if show and _show(name, drawn):
                stop.set()

    start = time.perf_counter()
    batches: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    results: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    failure: list[BaseException] = []
    reader = threading.Thread(target=_produce, daemon=True,
                              args=(_chain(first, frames), predictor.batch_size, batches, failure))
    writer_thread = threading.Thread(target=_consume, args=(results, handle, failure), daemon=True)
    reader.start()
    writer_thread.start()
    bar = progress_bar(total=total, desc=Path(name).name, unit="frame", enabled=progress)
    complete = False
    try:
        while (batch := batches.get()) is not _END and not stop.is_set() and not failure:
            results.put(list(zip(batch, predictor.predict_batch(batch))))
            bar.update(len(batch))
        complete = not failure
    finally:
        results.put(_END)
        writer_thread.join()
        stop.set()
        capture.release()
        bar.close()
        complete = complete and not failure
        if show:
            cv2.destroyAllWindows()
        _close_writers(writers, keep=complete)
    if failure:
        error = failure[0]
        if isinstance(error, (VideoError, OSError)):  # OSError: an output cannot be written
            raise error
        raise VideoError(f"{name}: {error}") from error
    return VideoSummary(source=name, frames=counter["frame"], fps=fps, width=width, height=height,
                        seconds=time.perf_counter() - start,
                        video_out=Path(video_out) if video_out is not None else None,
                        json_out=Path(json_out) if json_out is not None else None)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def display_available() -> str | None:
    """None when a window can be shown, else the reason why not."""
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    try:
        cv2.namedWindow("ssd-probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("ssd-probe")
    except cv2.error:
        return ("this OpenCV build has no GUI support (opencv-python-headless); install "
                "opencv-python to show a window")
    return None


def _show(title: str, frame: np.ndarray) -> bool:
    """Show `frame`; True when the user pressed q or Esc."""
    cv2.imshow(title, frame)
    return (cv2.waitKey(1) & 0xFF) in QUIT_KEYS
