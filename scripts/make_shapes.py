"""Write the synthetic shapes data set (a VOCdevkit layout) used by the demo and the tests.

    python scripts/make_shapes.py --root data/shapes
    python scripts/make_shapes.py --root data/shapes --num-train 2000 --num-test 300 \
        --image-size 300 --seed 0

The result is root/VOCshapes/{JPEGImages, Annotations, ImageSets/Main/{trainval,test}.txt},
readable by any VOC reader, e.g. VOCDataset(root, [("shapes", "trainval")], class_names=...).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone

from ssd.data import VOCDataset, make_shapes  # noqa: E402


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/shapes"),
                        help="folder that receives VOCshapes/ (default: data/shapes)")
    parser.add_argument("--num-train", type=int, default=2000, help="trainval images")
    parser.add_argument("--num-test", type=int, default=300, help="test images")
    parser.add_argument("--image-size", type=int, default=300, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="the data set is a function of it")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    names = make_shapes(args.root, args.num_train, args.num_test, args.image_size, args.seed)
    print(f"Wrote {args.num_train} + {args.num_test} images to {args.root / 'VOCshapes'} in "
          f"{time.perf_counter() - start:.1f} s; classes: {', '.join(names)}")
    for split in ("trainval", "test"):
        VOCDataset(args.root, [("shapes", split)], class_names=names, keep_difficult=True)
    return names


if __name__ == "__main__":
    main()
