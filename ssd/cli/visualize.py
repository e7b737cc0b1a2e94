"""Pictures of the default boxes, the prior matching and hard negative mining of one image
(ssd-visualize, or python scripts/visualize.py in a clone).

    ssd-visualize priors --config configs/voc300.yaml --image photo.jpg [--layer 2]
    ssd-visualize matches --config configs/shapes.yaml \\
        --image data/shapes/VOCshapes/JPEGImages/000000.jpg
    ssd-visualize mining --config configs/shapes.yaml --weights runs/shapes/best.pth \\
        --image 000000 --ratio 3

priors   the default boxes of the centre cell of every feature map (or of --layer K)
matches  the ground truth and the positive default boxes matched to each object, with IoU
mining   the negatives hard negative mining keeps for the image under --weights (without
         --weights: a freshly initialised model, i.e. the start of training), as a grid of
         tiles next to the ground truth

The ground truth (matches, mining) is read through the config's data set, whatever its
format (VOC, COCO, YOLO, shapes): --image is one of its image files, or an image id, looked
up in the test set, then the training set. --annotation FILE.xml gives a VOC XML file
instead, for an image outside the data set. The config comes from --weights when the file
carries one, else --config (default configs/voc300.yaml, a built-in config when no such file
exists). Writes a PNG (default out/<image name>_<kind>.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssd.cli.common import add_version_argument, load_cli_config, run_cli
from ssd.config import merge_overrides

DEFAULT_CONFIG = "configs/voc300.yaml"
KINDS = ("priors", "matches", "mining")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS, help="what to draw")
    parser.add_argument("--image", required=True,
                        help="the image to draw on: a file, or (matches, mining) an image id of "
                             "the config's data set")
    parser.add_argument("--config", help="YAML config (default: the one in --weights, else "
                                         f"{DEFAULT_CONFIG})")
    parser.add_argument("--weights", help="mining: the model whose losses rank the negatives "
                                          "(default: a freshly initialised one)")
    parser.add_argument("--annotation", help="VOC XML of the image (default: the image's "
                                             "objects in the config's data set)")
    parser.add_argument("--layer", type=int, help="priors: only this feature map (0 = largest)")
    parser.add_argument("--ratio", type=float, help="mining: negatives per positive "
                                                    "(default: loss.neg_pos_ratio, 3)")
    parser.add_argument("--max-tiles", type=int, default=36, help="mining: tiles drawn (hardest)")
    parser.add_argument("--seed", type=int, default=0, help="mining without --weights: init seed")
    parser.add_argument("--output", "--out", type=Path,
                        help="output PNG (default out/<image>_<kind>.png; --out is the old spelling)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    add_version_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssd.drawing import save_image
    from ssd.images import load_image
    from ssd.modeling.derived import resolve_priors
    from ssd.priors import priors_from_config

    model, cfg = load_model(args) if args.kind == "mining" else (None, load_settings(args))
    truth = None if args.kind == "priors" else ground_truth(args, cfg)
    image_path = Path(args.image) if truth is None else truth.image_path
    image = load_image(image_path)
    cfg = resolve_priors(cfg, model)  # the settings of priors left to the backbone
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    canvas = DRAW[args.kind](args, cfg, image, priors, model, truth)
    out = args.output or Path("out") / f"{image_path.stem}_{args.kind}.png"
    save_image(out, canvas)
    print(f"Wrote {out} ({canvas.shape[1]}x{canvas.shape[0]})")
    return 0


def load_settings(args):
    """The config of --config (default voc300) with --opts applied."""
    return load_cli_config(args.config or DEFAULT_CONFIG, overrides=args.opts)


def load_model(args):
    """(model, cfg) for mining: the --weights model, or a fresh one seeded with --seed (with
    its VGG backbone loaded when model.pretrained names an existing file, as training starts)."""
    import torch

    from ssd.modeling import build_model
    from ssd.weights import build_model_from_weights, load_vgg_backbone

    fallback = load_cli_config(args.config or DEFAULT_CONFIG)
    if args.weights:
        model, cfg = build_model_from_weights(args.weights, cfg=fallback)
        return model, merge_overrides(cfg, args.opts)
    cfg = merge_overrides(fallback, args.opts)
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    pretrained = cfg.model.pretrained
    if pretrained and Path(pretrained).is_file():
        load_vgg_backbone(model, pretrained)
    elif pretrained:
        print(f"note: model.pretrained {pretrained} not found; the backbone is random too")
    return model, cfg


def ground_truth(args, cfg):
    """The image's objects (ssd.analysis.DatasetImage): from --annotation, else from the
    config's data set."""
    from ssd.analysis import DatasetImage, find_dataset_image, read_voc_objects
    from ssd.data import class_names_for

    if not args.annotation:
        return find_dataset_image(cfg, args.image)
    xml = Path(args.annotation)
    if not xml.is_file():
        raise FileNotFoundError(f"Annotation not found: {xml} (--annotation)")
    names = class_names_for(cfg)
    target, difficult = read_voc_objects(xml, names)
    return DatasetImage(Path(args.image), target, difficult, names)


def targets_of(cfg, truth):
    """The loss's target Tensor[n, 5] of the image, and the difficult objects training leaves
    out (Tensor[m, 5]; none with data.keep_difficult)."""
    if cfg.data.keep_difficult:
        return truth.target, truth.target[:0]
    return truth.target[~truth.difficult], truth.target[truth.difficult]


def draw_priors(args, cfg, image, priors, _model, _truth):
    from ssd.visualize import draw_priors as draw

    return draw(image, priors, cfg.model.priors.feature_maps, cfg.model.priors.aspect_ratios,
                cfg.model.image_size, layer=args.layer)


def draw_matches(args, cfg, image, priors, _model, truth):
    from ssd.analysis import prior_layers
    from ssd.visualize import draw_matches as draw

    layers = prior_layers(cfg.model.priors.feature_maps, cfg.model.priors.aspect_ratios)
    target, ignored = targets_of(cfg, truth)
    return draw(image, target, priors, truth.class_names, iou_threshold=cfg.loss.iou_threshold,
                layers=layers, ignored=ignored)


def draw_mining(args, cfg, image, priors, model, truth):
    from ssd.analysis import image_confidences, prior_layers
    from ssd.visualize import draw_mining as draw

    ratio = args.ratio if args.ratio is not None else cfg.loss.neg_pos_ratio
    if ratio < 0 or args.max_tiles < 0:
        raise ValueError(f"--ratio and --max-tiles must be >= 0, got {ratio} and {args.max_tiles}")
    conf = image_confidences(model, image, cfg.model.image_size, cfg.data.mean)
    note = f"weights: {args.weights}" if args.weights else f"untrained model (seed {args.seed})"
    layers = prior_layers(cfg.model.priors.feature_maps, cfg.model.priors.aspect_ratios)
    target, ignored = targets_of(cfg, truth)
    return draw(image, target, priors, conf, truth.class_names, neg_pos_ratio=ratio,
                iou_threshold=cfg.loss.iou_threshold, layers=layers,
                image_size=cfg.model.image_size, max_tiles=args.max_tiles, note=note,
                ignored=ignored)


DRAW = {"priors": draw_priors, "matches": draw_matches, "mining": draw_mining}


if __name__ == "__main__":  # python -m ssd.cli.visualize
    run_cli(main)
