"""Detect objects in images: draw them, print them, optionally write them as JSON.

    python scripts/predict.py image.jpg --weights weights/ssd300_mAP_77.43_v2.pth
    python scripts/predict.py photos/ more.png "shots/*.jpg" --weights runs/shapes/best.pth --json
    python scripts/predict.py image.jpg --score-threshold 0.3 --precision fp32 --out drawn/

Inputs are image files, folders (their images, not recursive) and glob patterns. For each
image, <out>/<name>_det.jpg shows the boxes with class names and scores, and a table of the
detections is printed; --json also writes <out>/detections.json (boxes in the original
image's pixels, x1 y1 x2 y2). Images go through the network --batch-size at a time, with a
progress bar when there are several. An image that cannot be read is reported and skipped
(exit status 1).

The config comes from the weights file when it carries one (this project's checkpoints),
else --config, else configs/voc300.yaml (the classic SSD300 VOC weights). --precision
defaults to the fastest safe one for the device: bf16 on CPUs with native bfloat16, fp16 on
CUDA, else fp32.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from _common import REPO_ROOT, pick_device, run_cli  # noqa: I001  (sets up the import path)

from ssd.fileio import atomic_write

DEFAULT_WEIGHTS = Path("weights") / "ssd300.pth"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE",
                        help="image files, folders of images, or glob patterns")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                        help=f"checkpoint or classic state_dict (default {DEFAULT_WEIGHTS}; "
                             "see weights/README.md)")
    parser.add_argument("--config", help="YAML config, used when the weights carry none "
                                         "(default: configs/voc300.yaml)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="minimum class score of a detection (default 0.5)")
    parser.add_argument("--nms-threshold", type=float,
                        help="NMS IoU threshold (default: test.nms_threshold, 0.45)")
    parser.add_argument("--top-k", type=int, help="detections kept per image (default: test.top_k, 200)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="also write <out>/detections.json")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                        help="inference precision (default: the fastest safe one for the device)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssd.predictor import Predictor

    paths, failures = collect_images(args.inputs)
    for _, reason in failures:
        print(f"error: {reason} (skipped)", file=sys.stderr)
    weights = resolve_weights(args.weights)
    predictor = Predictor(weights, config=args.config, device=pick_device(args.device),
                          precision=args.precision, score_threshold=args.score_threshold,
                          nms_threshold=args.nms_threshold, top_k=args.top_k,
                          batch_size=args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    results, unreadable = run(predictor, paths, args.out, args.batch_size,
                              progress=not args.no_progress and len(paths) > 1)
    failures += unreadable
    if args.json:
        write_json(args.out / "detections.json", results, failures, predictor, weights)
    found = sum(len(entry["detections"]) for entry in results.values())
    print(f"{_count(len(results), 'image')}, {_count(found, 'detection')} (score > "
          f"{args.score_threshold}, {predictor.precision}) -> {args.out}/"
          + (f"; {_count(len(failures), 'input')} failed (see the errors above)" if failures else ""))
    return 1 if failures else 0


def collect_images(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders' image files (sorted, not recursive), glob matches (sorted);
    duplicates removed.

    Returns:
        (image paths, [(input, reason)] for each missing file, folder without images or
        pattern that matches nothing).

    Raises:
        FileNotFoundError: no input names an image (nothing to process); the message lists
            every reason.
    """
    paths: list[Path] = []
    failures: list[tuple[str, str]] = []
    for item in inputs:
        found, reason = _expand_input(item)
        paths += found
        if reason:
            failures.append((item, reason))
    if not paths:
        raise FileNotFoundError("; ".join(reason for _, reason in failures))
    return list(dict.fromkeys(paths)), failures


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
    return [], f"Image file not found: {item}"


def resolve_weights(weights: str) -> Path:
    """--weights as given; the default is also looked for in the repository when run from
    another folder."""
    path = Path(weights)
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def run(predictor, paths: list[Path], out: Path, batch_size: int, progress: bool):
    """Detect, draw and print every image; returns ({path: entry}, [(path, reason)] for the
    images that could not be read)."""
    from tqdm import tqdm

    from ssd.drawing import save_image
    from ssd.images import load_image

    results, failures = {}, []
    names = output_names(paths)
    with tqdm(total=len(paths), unit="image", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(paths), batch_size):
            batch, images = [], []
            for path in paths[start:start + batch_size]:
                try:
                    images.append(load_image(path))
                    batch.append(path)
                except (OSError, ValueError) as err:
                    failures.append((str(path), str(err)))
                    tqdm.write(f"error: {err} (skipped)", file=sys.stderr)
            for path, image, found in zip(batch, images, predictor.predict_batch(images)):
                drawn_path = out / f"{names[path]}_det.jpg"
                save_image(drawn_path, predictor.draw(image, found))
                tqdm.write(format_table(path, image.shape, found))
                results[str(path)] = {"width": image.shape[1], "height": image.shape[0],
                                      "drawn": str(drawn_path), "detections": found}
            bar.update(len(paths[start:start + batch_size]))
    return results, failures


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
               weights: Path) -> None:
    """detections.json: settings, {image: size, drawn file, detections}, {input: why it failed}."""
    post = predictor.postprocess
    document = {
        "weights": str(weights),
        "settings": {"score_threshold": post.conf_threshold, "nms_threshold": post.nms_threshold,
                     "top_k": post.top_k, "precision": predictor.precision,
                     "image_size": predictor.cfg.model.image_size},
        "box_format": "x1, y1, x2, y2 in pixels of the original image",
        "images": results,
        "failed": dict(failures),
    }
    atomic_write(path, json.dumps(document, indent=2))
    print(f"Wrote {path}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


if __name__ == "__main__":
    run_cli(main)
