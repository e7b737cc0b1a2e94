"""Write the synthetic shapes data set (a VOCdevkit layout) used by the demo and the tests
(ssd-make-shapes, or python scripts/make_shapes.py in a clone). The defaults are the demo's
(data.root and data.shapes of configs/shapes.yaml, a built-in config when no such file exists).

    ssd-make-shapes                    # the demo's set (configs/shapes.yaml)
    ssd-make-shapes --root data/shapes --num-train 2000 --num-test 300 --image-size 300 \
        --seed 0 --workers 2

The result is root/VOCshapes/{JPEGImages, Annotations, ImageSets/Main/{trainval,test}.txt},
readable by any VOC reader, e.g. VOCDataset(root, [("shapes", "trainval")], class_names=...).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ssd.cli.common import add_version_argument, load_cli_config, run_cli
from ssd.data import VOCDataset, make_shapes

DEMO_CONFIG = "configs/shapes.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = load_cli_config(DEMO_CONFIG).data
    parser.add_argument("--root", type=Path, default=Path(demo.root),
                        help=f"folder that receives VOCshapes/ (default: {demo.root})")
    parser.add_argument("--num-train", type=int, default=demo.shapes.num_train, help="trainval images")
    parser.add_argument("--num-test", type=int, default=demo.shapes.num_test, help="test images")
    parser.add_argument("--image-size", type=int, default=demo.shapes.image_size,
                        help="image side in pixels")
    parser.add_argument("--seed", type=int, default=demo.shapes.seed, help="the data set is a function of it")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: one per CPU core)")
    add_version_argument(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    names = make_shapes(args.root, args.num_train, args.num_test, args.image_size, args.seed,
                        workers=args.workers, progress=True)
    print(f"Wrote {args.num_train} + {args.num_test} images to {args.root / 'VOCshapes'} in "
          f"{time.perf_counter() - start:.1f} s; classes: {', '.join(names)}")
    for split in ("trainval", "test"):
        VOCDataset(args.root, [("shapes", split)], class_names=names, keep_difficult=True)
    return 0


if __name__ == "__main__":  # python -m ssd.cli.make_shapes
    run_cli(main)
