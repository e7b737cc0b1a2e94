"""Convert a detection data set between the VOC, COCO and YOLO layouts, every split it finds
(ssd-convert, or python scripts/convert_dataset.py in a clone).

    ssd-convert --from voc --to yolo --root data/VOCdevkit/VOC2007 --out data/voc07_yolo
    ssd-convert --from yolo --to coco --root data/mine --out data/mine_coco
    ssd-convert --from voc --to coco --root data/mydata --out data/mydata_coco \
        --class-names bolt,nut,washer

Images are copied. The output appears complete or not at all; OUT/README.txt holds the config
lines that read it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssd.cli.common import add_version_argument, run_cli
from ssd.data.convert import FORMATS, convert_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=FORMATS, help="input format")
    parser.add_argument("--to", dest="target", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--root", type=Path, required=True, help="input data set folder")
    parser.add_argument("--output", "--out", type=Path, required=True,
                        help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--class-names", default=None,
                        help="comma-separated classes in label order (VOC input: default the "
                             "sorted names found in the XML files; COCO / YOLO input: must agree "
                             "with the file's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_version_argument(parser)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.class_names.split(",")] if args.class_names else None
    if names is not None and (not all(names) or len(set(names)) != len(names)):
        parser.error(f"--class-names needs distinct, non-empty names, got {args.class_names!r}")
    convert_dataset(args.root, args.output, args.source, args.target, class_names=names,
                    overwrite=args.overwrite, progress=not args.no_progress)
    return 0


if __name__ == "__main__":  # python -m ssd.cli.convert
    run_cli(main)
